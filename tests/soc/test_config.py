from __future__ import annotations

from pathlib import Path

import pytest

from soc.config import env_name, iter_settings, load_settings
from soc.errors import ConfigError


def test_defaults_need_no_file(tmp_path: Path) -> None:
    settings = load_settings(env={}, cwd=tmp_path)
    assert settings.data_dir == Path("soc-data")
    assert settings.store.backend == "sqlite"
    assert settings.sqlite_path == Path("soc-data") / "soc.db"
    assert all(source == "default" for _, _, source in iter_settings(settings))


def test_file_then_environment(tmp_path: Path) -> None:
    (tmp_path / "soc.toml").write_text(
        'data_dir = "data"\n[store]\nbatch_size = 100\n[sqlite]\nsynchronous = "full"\n'
    )
    settings = load_settings(env={"SOC_STORE_BATCH_SIZE": "7"}, cwd=tmp_path)
    assert settings.store.batch_size == 7  # the environment wins over the file
    assert settings.sqlite.synchronous == "FULL"
    assert settings.data_dir == tmp_path / "data"  # relative to the file's folder
    assert settings.sources["store.batch_size"] == "SOC_STORE_BATCH_SIZE"
    assert settings.sources["sqlite.synchronous"] == "soc.toml"


def test_env_name() -> None:
    assert env_name("elasticsearch.url") == "SOC_ELASTICSEARCH_URL"
    assert env_name("data_dir") == "SOC_DATA_DIR"


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"SOC_STORE_BATCH_SIZE": "many"}, "store.batch_size"),
        ({"SOC_STORE_BATCH_SIZE": "0"}, "store.batch_size"),
        ({"SOC_STORE_BACKEND": "postgres"}, "store.backend"),
        ({"SOC_SQLITE_PAGE_SIZE": "1000"}, "sqlite.page_size"),
    ],
)
def test_bad_environment_value_names_the_key(tmp_path: Path, env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env=env, cwd=tmp_path)
    assert info.value.location == key
    assert key in str(info.value)


def test_unknown_key_in_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "soc.toml").write_text("[store]\nbatch_sise = 3\n")
    with pytest.raises(ConfigError) as info:
        load_settings(env={}, cwd=tmp_path)
    assert info.value.location == "store.batch_sise"


def test_wrong_type_in_file(tmp_path: Path) -> None:
    (tmp_path / "soc.toml").write_text('[store]\nbatch_size = "big"\n')
    with pytest.raises(ConfigError, match=r"store\.batch_size"):
        load_settings(env={}, cwd=tmp_path)


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "soc.toml").write_text("[store\n")
    with pytest.raises(ConfigError, match=r"soc\.toml"):
        load_settings(env={}, cwd=tmp_path)


def test_explicit_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml", env={}, cwd=tmp_path)


def test_secrets_are_masked(tmp_path: Path) -> None:
    settings = load_settings(env={"SOC_ELASTICSEARCH_PASSWORD": "hunter2"}, cwd=tmp_path)
    shown = {k: v for k, v, _ in iter_settings(settings)}
    assert shown["elasticsearch.password"] == "********"
    assert settings.elasticsearch.password == "hunter2"


def test_dlms_keys_are_checked_and_read() -> None:
    from soc.config import CollectSettings

    title, block, auth = "4d4d4d0000bc614e", "00" * 16, "d0" * 16
    settings = CollectSettings(dlms_keys=(f"{title}:{block}:{auth}",))
    assert settings.dlms_key_table() == {
        bytes.fromhex(title): (bytes.fromhex(block), bytes.fromhex(auth))
    }
    for bad in (
        f"{title}:{block}",
        f"{title}:{block}:{auth[:-2]}",
        f"zz{title[2:]}:{block}:{auth}",
    ):
        with pytest.raises(ConfigError, match=r"collect\.dlms_keys"):
            CollectSettings(dlms_keys=(bad,))
