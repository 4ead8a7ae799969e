//! The command line as a user meets it: `check` on the shipped configs, errors that name what
//! is wrong, and non-zero exits.

use std::path::Path;
use std::process::{Command, Output};

fn lambdaflow(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lambdaflow-e2e"));
    command
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("running lambdaflow")
}

#[test]
fn check_accepts_every_shipped_config() {
    let mut configs: Vec<_> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
    configs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../common/src/demo.toml"));
    for config in configs {
        let out = lambdaflow(&["check", "--config", config.to_str().unwrap()], &[]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}: {}",
            config.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("config ok") && stdout.contains("view sales_by_country"),
            "{stdout}"
        );
    }
}

#[test]
fn unknown_keys_and_bad_values_name_the_key_and_exit_non_zero() {
    let cases = [
        ("LAMBDAFLOW_KAFKA__BROKERZ", "x", "brokerz"),
        ("LAMBDAFLOW_SOURCE__MAX_FUTURE", "soon", "soon"),
        ("LAMBDAFLOW_KAFKA__PARTITIONS", "0", "kafka.partitions"),
    ];
    for (var, value, named) in cases {
        let out = lambdaflow(
            &["check", "--config", "deploy/lambdaflow.toml"],
            &[(var, value)],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{var}={value} was accepted");
        assert!(stderr.contains(named), "{var}={value}: {stderr}");
    }
    let out = lambdaflow(&["check", "--config", "no/such/file.toml"], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no/such/file.toml"));
}

#[test]
fn environment_overrides_reach_the_config() {
    let out = lambdaflow(
        &["check", "--config", "deploy/lambdaflow.toml"],
        &[
            ("LAMBDAFLOW_KAFKA__BROKERS", "kafka-1:9092"),
            ("LAMBDAFLOW_KAFKA__TOPIC", "clicks"),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        stdout.contains("topic `clicks` on kafka-1:9092"),
        "{stdout}"
    );
}

#[test]
fn batch_run_prints_its_record_or_fails_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let lake = lake.to_str().unwrap();
    let out = lambdaflow(
        &["batch", "run", "--config", "deploy/lambdaflow.toml"],
        &[("LAMBDAFLOW_LAKE__URI", lake)],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let record: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(record["status"], "succeeded");
    assert_eq!(record["trigger"], "cli");
    assert!(!record["views"].as_array().unwrap().is_empty());

    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, "not a directory").unwrap();
    let out = lambdaflow(
        &["batch", "run", "--config", "deploy/lambdaflow.toml"],
        &[("LAMBDAFLOW_LAKE__URI", blocker.to_str().unwrap())],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("error: lake uri"), "{stderr}");
}
