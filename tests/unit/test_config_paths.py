"""Where relative state and certificate-store paths go: the data folder for the system
configuration (/etc/sip-media-gateway), the configuration's own folder for any other."""

from __future__ import annotations

from gateway.config import SYSTEM_CONFIG_DIR, SYSTEM_DATA_DIR, data_dir, parse_config


def test_system_configuration_keeps_state_and_certs_under_var_lib() -> None:
    config = parse_config("", "gateway.toml", base_dir=SYSTEM_CONFIG_DIR)
    assert config.state.directory == f"{SYSTEM_DATA_DIR}/state"
    assert config.certs.store == f"{SYSTEM_DATA_DIR}/certs"


def test_relative_values_of_the_system_configuration_go_under_var_lib_too() -> None:
    text = '[state]\ndirectory = "site-state"\n[certs]\nstore = "pki"\n'
    config = parse_config(text, "gateway.toml", base_dir=SYSTEM_CONFIG_DIR + "/")
    assert config.state.directory == f"{SYSTEM_DATA_DIR}/site-state"
    assert config.certs.store == f"{SYSTEM_DATA_DIR}/pki"


def test_other_configurations_keep_their_own_folder() -> None:
    config = parse_config("", "gateway.toml", base_dir="/srv/lab")
    assert (config.state.directory, config.certs.store) == ("/srv/lab/state", "/srv/lab/certs")
    # A folder that only looks like the system one is not it.
    assert data_dir("/etc/sip-media-gateway-lab") == "/etc/sip-media-gateway-lab"


def test_absolute_paths_are_kept() -> None:
    text = '[state]\ndirectory = "/data/state"\n[certs]\nstore = "/data/certs"\n'
    config = parse_config(text, "gateway.toml", base_dir=SYSTEM_CONFIG_DIR)
    assert (config.state.directory, config.certs.store) == ("/data/state", "/data/certs")
