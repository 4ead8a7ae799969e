//! `deploy/` checked here, where no Docker engine runs: the compose file parses as YAML, every
//! lambdaflow service runs a real subcommand (parsed by the binary's own CLI parser) with a
//! config that passes `lambdaflow check`, the wiring between services agrees (Kafka, MinIO and
//! its bucket, Prometheus targets, published ports), and the Dockerfile builds the real binary
//! into a slim image that runs as a non-root user.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use lambdaflow_common::config::Config;
use lambdaflow_serving::cli::{BatchCommand, Cli, Command as Sub};
use lambdaflow_tests::python;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn yaml(path: &Path) -> Value {
    let out = python()
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(path)
        .output()
        .expect("running python: set LAMBDAFLOW_PYTHON (bash .ci/run does)");
    assert!(
        out.status.success(),
        "{} is not valid YAML (or PyYAML is missing): {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("expected a list, got {value}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

fn files_under(dir: &Path, extension: &str, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, extension, out);
        } else if path.extension().is_some_and(|e| e == extension) {
            out.push(path);
        }
    }
}

#[test]
fn every_config_under_deploy_passes_check() {
    let mut configs = Vec::new();
    files_under(&repo().join("deploy"), "toml", &mut configs);
    assert!(configs.len() >= 2, "{configs:?}");
    for config in configs {
        let out = Command::new(env!("CARGO_BIN_EXE_lambdaflow-e2e"))
            .arg("check")
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "lambdaflow check --config {}: {}",
            config.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("config ok"));
    }
}

#[test]
fn the_compose_file_runs_real_commands_with_real_configs() {
    let deploy = repo().join("deploy");
    let compose = yaml(&deploy.join("docker-compose.yml"));
    let services = compose["services"].as_object().unwrap();
    let names: BTreeSet<&str> = services.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "archive",
            "batch",
            "executor-1",
            "executor-2",
            "gen",
            "kafka",
            "minio",
            "minio-init",
            "prometheus",
            "scheduler",
            "serve"
        ])
    );

    let kafka = &services["kafka"];
    assert!(
        kafka["image"]
            .as_str()
            .unwrap()
            .starts_with("apache/kafka:")
    );
    assert!(
        kafka["environment"]["KAFKA_PROCESS_ROLES"]
            .as_str()
            .unwrap()
            .contains("controller"),
        "Kafka runs in KRaft mode, controller and broker in one"
    );
    let advertised = kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"]
        .as_str()
        .unwrap();
    let init = strings(&services["minio-init"]["entrypoint"]).join(" ");

    let prometheus = yaml(&deploy.join("compose/prometheus.yml"));
    let targets: BTreeSet<String> = prometheus["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|job| strings(&job["static_configs"][0]["targets"]))
        .collect();
    let mut scraped = BTreeSet::new();
    let mut cluster = Vec::new();

    for (name, service) in services {
        assert!(
            service["restart"].is_string(),
            "{name} has a restart policy"
        );
        if name != "minio-init" {
            assert!(
                service["healthcheck"]["test"].is_array(),
                "{name} has a healthcheck"
            );
        }
        for dependency in service["depends_on"]
            .as_object()
            .into_iter()
            .flat_map(|d| d.keys())
        {
            assert!(
                services.contains_key(dependency),
                "{name} depends on {dependency}"
            );
        }
        if service["image"] != "lambdaflow:local" {
            continue;
        }
        assert_eq!(
            service["build"]["dockerfile"], "deploy/Dockerfile",
            "{name}"
        );
        let command = strings(&service["command"]);
        let cli =
            Cli::try_parse_from(std::iter::once("lambdaflow".to_owned()).chain(command.clone()))
                .unwrap_or_else(|e| {
                    panic!(
                        "{name}: `lambdaflow {}` does not parse: {e}",
                        command.join(" ")
                    )
                });
        let (config_path, metrics) = match &cli.command {
            Sub::Archive(a) => (
                a.worker.config.config.clone(),
                a.worker.metrics_listen.clone(),
            ),
            Sub::Batch {
                command: BatchCommand::Schedule(w),
            } => (w.config.config.clone(), w.metrics_listen.clone()),
            Sub::Serve(c) => (c.config.clone(), None),
            Sub::Gen {
                config, heartbeat, ..
            } => {
                let beat = heartbeat
                    .as_ref()
                    .unwrap_or_else(|| panic!("{name} writes a heartbeat file"));
                let probe = strings(&service["healthcheck"]["test"]).join(" ");
                assert!(
                    probe.contains(&format!("stat -c %Y {}", beat.display())),
                    "{name}'s healthcheck reads the age of its heartbeat file: {probe}"
                );
                (config.config.clone(), None)
            }
            Sub::Cluster { command } => {
                assert_eq!(strings(&service["profiles"]), ["cluster"], "{name}");
                cluster.push((name.clone(), command.clone()));
                continue;
            }
            other => panic!(
                "{name} runs {other:?}; the compose file runs archive, serve, batch schedule and gen"
            ),
        };
        let mount = strings(&service["volumes"])
            .into_iter()
            .find_map(|v| {
                let mut parts = v.split(':');
                let (host, container) = (parts.next()?, parts.next()?);
                (Path::new(container) == config_path).then(|| deploy.join(host))
            })
            .unwrap_or_else(|| panic!("{name}: {} is not mounted", config_path.display()));
        let environment: Vec<(String, String)> = service["environment"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                // `${NAME:-default}` is what compose gives when NAME is unset.
                let v = match v.strip_prefix("${").and_then(|r| r.split_once(":-")) {
                    Some((_, default)) => default.trim_end_matches('}').to_owned(),
                    None => v,
                };
                (k.clone(), v)
            })
            .collect();
        let text = std::fs::read_to_string(&mount).unwrap();
        let config = Config::from_toml(&text, &mount.display().to_string(), environment.clone())
            .unwrap_or_else(|e| panic!("{name}: {}: {e}", mount.display()));
        assert!(
            advertised.contains(&format!("PLAINTEXT://{}", config.kafka.brokers)),
            "{name} reaches Kafka at {}, which Kafka advertises",
            config.kafka.brokers
        );
        let bucket = config
            .lake
            .uri
            .strip_prefix("s3://")
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_else(|| panic!("{name}: the lake is on S3, not {}", config.lake.uri));
        assert!(
            init.contains(&format!("/{bucket}")),
            "minio-init creates bucket {bucket}: {init}"
        );
        let endpoint = environment
            .iter()
            .find(|(k, _)| k == "AWS_ENDPOINT_URL")
            .map(|(_, v)| v.as_str());
        assert_eq!(endpoint, Some("http://minio:9000"), "{name}");
        let listen = match (&cli.command, metrics) {
            (_, Some(listen)) => Some(listen),
            (Sub::Serve(_), None) => Some(config.serving.listen.clone()),
            _ => None,
        };
        if let Some(listen) = listen {
            let port = listen.rsplit(':').next().unwrap();
            let target = format!("{name}:{port}");
            assert!(
                targets.contains(&target),
                "Prometheus scrapes {target}: {targets:?}"
            );
            scraped.insert(target);
            let probe = strings(&service["healthcheck"]["test"]).join(" ");
            assert!(
                probe.contains(&format!("localhost:{port}/")),
                "{name}'s healthcheck asks its own port: {probe}"
            );
        }
    }
    assert_eq!(
        scraped, targets,
        "every Prometheus target is a lambdaflow process"
    );
    // The cluster profile: one scheduler, two executors that reach it by its service name, and
    // batch runs sent to it when LAMBDAFLOW_BATCH_ENGINE says so.
    use lambdaflow_serving::cli::ClusterCommand;
    let scheduler = cluster.iter().find_map(|(name, c)| match c {
        ClusterCommand::Scheduler { bind, advertise } => {
            assert_eq!(advertise.as_deref(), Some(name.as_str()));
            Some(format!("{name}:{}", bind.port()))
        }
        ClusterCommand::Executor { .. } => None,
    });
    let scheduler = scheduler.expect("the cluster profile has a scheduler");
    let executors: Vec<&String> = cluster
        .iter()
        .filter_map(|(name, c)| match c {
            ClusterCommand::Executor {
                scheduler: to,
                advertise,
                ..
            } => {
                assert_eq!(to, &scheduler, "{name} registers with the scheduler");
                assert_eq!(advertise.as_deref(), Some(name.as_str()));
                Some(name)
            }
            ClusterCommand::Scheduler { .. } => None,
        })
        .collect();
    assert_eq!(executors.len(), 2, "{executors:?}");
    let header = std::fs::read_to_string(deploy.join("docker-compose.yml")).unwrap();
    assert!(
        header.contains(&format!("LAMBDAFLOW_BATCH_ENGINE=ballista://{scheduler} ")),
        "the compose file says how to send batch runs to {scheduler}"
    );
    let published = strings(&services["serve"]["ports"]);
    assert!(
        published.contains(&"8480:8080".to_owned()),
        "the dashboard is published on 8480"
    );
    let compose_config = std::fs::read_to_string(deploy.join("compose/lambdaflow.toml")).unwrap();
    let pg_port = compose_config
        .lines()
        .find_map(|l| l.strip_prefix("pg_listen = "))
        .and_then(|listen| listen.trim_matches('"').rsplit(':').next())
        .expect("the compose config serves Postgres clients");
    assert!(
        published.contains(&format!("{pg_port}:{pg_port}")),
        "the Postgres port {pg_port} is published: {published:?}"
    );

    // Kafka keeps its log on its volume: a restart must not empty the topics the lake holds
    // offsets of.
    let log_dirs = kafka["environment"]["KAFKA_LOG_DIRS"].as_str().unwrap();
    assert!(
        strings(&kafka["volumes"])
            .iter()
            .any(|v| v.split(':').nth(1) == Some(log_dirs)),
        "KAFKA_LOG_DIRS ({log_dirs}) is the Kafka volume's mount point"
    );
    // MinIO's images come from the registry MinIO publishes to, not Docker Hub.
    for name in ["minio", "minio-init"] {
        let image = services[name]["image"].as_str().unwrap();
        assert!(image.starts_with("quay.io/minio/"), "{name}: {image}");
    }
    // Host ports clear of the defaults of what runs beside it: Airflow, Spark (master, worker,
    // UI, history), Pinot (controller, broker, server, ZooKeeper), a local Kafka, Prometheus,
    // PostgreSQL.
    let taken = [
        8080, 8081, 4040, 7077, 18080, 9000, 8099, 8098, 8097, 2181, 9092, 9090, 5432,
    ];
    for (name, service) in services {
        for mapping in service["ports"].as_array().into_iter().flatten() {
            let host: u16 = mapping
                .as_str()
                .unwrap()
                .split(':')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            assert!(
                !taken.contains(&host),
                "{name} publishes {host}, a common default"
            );
        }
    }
}

#[test]
fn the_dockerfile_builds_the_binary_into_a_slim_non_root_image() {
    let repo = repo();
    let dockerfile = std::fs::read_to_string(repo.join("deploy/Dockerfile")).unwrap();
    let lines: Vec<&str> = dockerfile.lines().map(str::trim).collect();
    let stages: Vec<usize> = (0..lines.len())
        .filter(|i| lines[*i].starts_with("FROM "))
        .collect();
    assert_eq!(stages.len(), 2, "a build stage and a runtime stage");
    let workspace = std::fs::read_to_string(repo.join("Cargo.toml")).unwrap();
    let rust_version = workspace
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .and_then(|v| v.split('"').next())
        .unwrap();
    assert!(
        lines[stages[0]].starts_with(&format!("FROM rust:{rust_version}-")),
        "the build image is the workspace's Rust {rust_version}: {}",
        lines[stages[0]]
    );
    assert!(
        lines[stages[1]].starts_with("FROM debian:") && lines[stages[1]].ends_with("-slim"),
        "{}",
        lines[stages[1]]
    );
    assert!(
        dockerfile
            .contains("cargo build --release --locked -p lambdaflow-serving --bin lambdaflow")
    );
    let serving = std::fs::read_to_string(repo.join("serving/Cargo.toml")).unwrap();
    assert!(
        serving.contains("name = \"lambdaflow\""),
        "the binary the image builds exists"
    );
    let runtime = &lines[stages[1]..];
    let user = runtime
        .iter()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the runtime stage sets a user");
    assert!(!["root", "0"].contains(&user.trim()), "runs as {user}");
    assert!(runtime.contains(&"ENTRYPOINT [\"lambdaflow\"]"));
    // `docker run` with no command starts the demo, reachable through a published port.
    let cmd = runtime
        .iter()
        .find_map(|l| l.strip_prefix("CMD "))
        .expect("the runtime stage has a CMD");
    let argv: Vec<String> = serde_json::from_str(cmd).expect("CMD in exec form");
    let cli = Cli::try_parse_from(std::iter::once("lambdaflow".to_owned()).chain(argv))
        .unwrap_or_else(|e| panic!("CMD {cmd}: {e}"));
    let Sub::Demo {
        listen: Some(listen),
        pg_listen: Some(pg_listen),
        ..
    } = cli.command
    else {
        panic!("CMD {cmd} runs the demo's API and Postgres listener on given addresses");
    };
    let exposed = runtime
        .iter()
        .find_map(|l| l.strip_prefix("EXPOSE "))
        .expect("the runtime stage exposes its ports");
    for listen in [listen, pg_listen] {
        let listen: std::net::SocketAddr = listen.parse().unwrap();
        assert!(
            listen.ip().is_unspecified(),
            "the demo listens beyond the container: {listen}"
        );
        assert!(
            exposed
                .split_whitespace()
                .any(|p| p == listen.port().to_string()),
            "EXPOSE {exposed} has the demo's port {}",
            listen.port()
        );
    }
    for line in runtime
        .iter()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from="))
    {
        let source = line.split_whitespace().nth(1).unwrap();
        assert!(repo.join(source).exists(), "{source} is in the repository");
    }
    let ignore = std::fs::read_to_string(repo.join(".dockerignore")).unwrap();
    assert!(
        ignore.lines().any(|l| l.trim() == "target"),
        "the build context leaves target/ out"
    );
}
