//! schemathesis, a fuzzer written elsewhere, against the running product: it reads
//! `/openapi.json` and sends every operation schema-valid and schema-breaking requests, with
//! auth off and with tokens on. No answer may be a 5xx or differ from what the document says,
//! and the process must still serve when it is done. `tests/schemathesis.toml` lists the rules
//! a schema cannot state and the checks they widen.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use lambdaflow_common::auth::token_hash;
use lambdaflow_tests::e2e::Api;
use lambdaflow_tests::{Process, free_port};

const TOKEN: &str = "fuzz-token";

async fn fuzz(auth: bool) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut config = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../common/src/demo.toml"),
    )
    .unwrap();
    if auth {
        config.push_str(&format!(
            "\n[serving.auth]\nmode = \"tokens\"\n\n[[serving.auth.tokens]]\nname = \"fuzzer\"\nsha256 = \"{}\"\nscopes = [\"ingest\", \"query\", \"admin\"]\n",
            hex::encode(token_hash(TOKEN))
        ));
    }
    let config_path = dir.path().join("lambdaflow.toml");
    std::fs::write(&config_path, config).unwrap();
    let api = Api::new(format!("http://127.0.0.1:{port}"));
    let mut process = Process::start(
        "lambdaflow",
        Command::new(env!("CARGO_BIN_EXE_lambdaflow-e2e"))
            .args(["run", "--config"])
            .arg(&config_path)
            .env("LAMBDAFLOW_SERVING__LISTEN", format!("127.0.0.1:{port}"))
            .env("LAMBDAFLOW_LAKE__URI", dir.path().join("lake")),
        dir.path(),
    );
    let ready = Instant::now();
    while api.get("/readyz").await.0 != 200 {
        assert!(process.is_running(), "lambdaflow stopped while starting");
        assert!(ready.elapsed() < Duration::from_secs(120), "never ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let schemathesis =
        std::env::var("LAMBDAFLOW_SCHEMATHESIS").unwrap_or_else(|_| "schemathesis".into());
    let mut command = Command::new(&schemathesis);
    command
        .arg("--no-color")
        .arg("--config-file")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("schemathesis.toml"))
        .args(["run", &format!("{}/openapi.json", api.base)])
        .args(["--checks", "all", "--max-time", "60", "--seed", "7"])
        // The coverage phase trips a CPython 3.11 bug (`SystemError: AST constructor recursion
        // depth mismatch`, from hypothesis describing its lambdas) at random: a fuzzer error,
        // not a finding.
        .args(["--phases", "examples,fuzzing,stateful"])
        .args(["--workers", "2"]);
    if auth {
        command.args(["--header", &format!("Authorization: Bearer {TOKEN}")]);
    }
    let out = command.output().unwrap_or_else(|e| {
        panic!(
            "running {schemathesis}: {e}; set LAMBDAFLOW_SCHEMATHESIS to its path (bash .ci/run installs it)"
        )
    });
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found failures (auth {auth}):\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(process.is_running(), "lambdaflow died under the fuzzer");
    assert_eq!(
        api.get("/healthz").await.0,
        200,
        "lambdaflow stopped answering"
    );
    eprintln!("{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_with_auth_off() {
    fuzz(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_with_tokens_on() {
    fuzz(true).await;
}
