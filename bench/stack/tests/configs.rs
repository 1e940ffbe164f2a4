//! The typed schema written as TOML reads back as the same configuration: the kit writes
//! gateway configs only this way, so a field that serialized differently from how it parses
//! would silently change what tests run.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::Path;

use hsm_config::{Config, PinSource};
use hsmgate_stack::configs;

fn round_trip(config: &Config) -> Config {
    let text = configs::to_toml(config).unwrap();
    Config::parse(&text, Path::new("written.toml"), config.base_dir.clone())
        .unwrap_or_else(|e| panic!("{e}\n{text}"))
}

#[test]
fn every_example_round_trips() {
    for name in ["two-dc.toml", "dev.toml"] {
        let config = configs::example(name, Path::new("/tmp")).unwrap();
        assert_eq!(round_trip(&config), config, "{name}");
    }
}

#[test]
fn edits_survive_the_round_trip() {
    let mut config = configs::example("two-dc.toml", Path::new("/tmp")).unwrap();
    configs::ephemeral_ports(&mut config, true);
    configs::pins_from_file(&mut config, Path::new("/tmp/x/user.pin"));
    configs::module_everywhere(&mut config, Path::new("/opt/libhsm_sim.so"));
    let back = round_trip(&config);
    assert_eq!(back, config);
    assert_eq!(back.gateway.listen.port(), 0);
    let hsm = &back.datacenters[0].hsms[0];
    assert_eq!(hsm.pin, PinSource::File("/tmp/x/user.pin".into()));
    assert_eq!(hsm.module, Path::new("/opt/libhsm_sim.so"));
}

#[test]
fn an_invalid_pin_source_is_not_written() {
    let mut config = configs::example("two-dc.toml", Path::new("/tmp")).unwrap();
    config.datacenters[0].hsms[0].pin = PinSource::Invalid("inline PINs are refused");
    assert!(configs::to_toml(&config).is_err());
}

#[test]
fn ready_lines_give_their_addresses() {
    let ready = hsmgate_stack::Ready {
        line: "READY grpc=127.0.0.1:41234 metrics=none".into(),
    };
    assert_eq!(ready.addr("grpc"), Some("127.0.0.1:41234".parse().unwrap()));
    assert_eq!(ready.field("metrics"), Some("none"));
    assert_eq!(ready.addr("metrics"), None);
    assert_eq!(ready.addr("http"), None);
}
