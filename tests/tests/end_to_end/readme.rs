//! The README's first screen, run as written: its `curl` commands against `lambdaflow demo`
//! (on another port) must answer, and the view query must answer in the shape the README
//! shows, with both the batch and the speed side in it.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use lambdaflow_tests::{free_port, scratch_dir};
use serde_json::Value;

/// The `curl` commands of the README's `sh` blocks, continuation lines joined.
fn readme_commands(readme: &str) -> Vec<String> {
    readme
        .split("```sh\n")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .flat_map(|block| {
            block
                .replace("\\\n", " ")
                .lines()
                .filter(|l| l.starts_with("curl "))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn keys(value: &Value) -> BTreeSet<&str> {
    value
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

async fn get(client: &reqwest::Client, url: &str) -> Option<Value> {
    let reply = client.get(url).send().await.ok()?;
    reply.status().is_success().then_some(())?;
    serde_json::from_slice(&reply.bytes().await.ok()?).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_commands_answer_as_shown() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let commands = readme_commands(&readme);
    assert!(commands.len() >= 2, "the README shows a view query and SQL");
    let shown: Value = readme
        .split("```json\n")
        .nth(1)
        .and_then(|block| block.split("```").next())
        .map(|json| serde_json::from_str(json).expect("the README's answer is JSON"))
        .expect("the README shows an answer");

    let dir = scratch_dir();
    let port = free_port();
    let _demo = crate::demo::start(dir.path(), dir.path(), &format!("127.0.0.1:{port}"), 100);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    crate::demo::ready(&client, &base).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    // The README's answer has both sides: wait for a batch version under the speed side.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = client
        .post(format!("{base}/v1/batch/runs"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert!(started.status().is_success() || started.status() == 409);
    loop {
        let view = get(&client, &format!("{base}/v1/views/sales_by_country")).await;
        if view.is_some_and(|v| v["batch_version"].is_u64()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no batch version within two minutes"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    for command in &commands {
        let command = command.replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"));
        let out = Command::new("bash")
            .args(["-c", &command])
            .output()
            .unwrap();
        assert!(out.status.success(), "{command}: {out:?}");
        let answer: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{command}: {e}: {out:?}"));
        assert!(answer.get("error").is_none(), "{command}: {answer}");
        if command.contains("/query?") {
            assert_eq!(keys(&answer), keys(&shown), "{answer}");
            let rows = answer["rows"].as_array().unwrap();
            assert_eq!(rows.len(), shown["rows"].as_array().unwrap().len());
            for row in rows {
                assert_eq!(keys(row), keys(&shown["rows"][0]), "{row}");
            }
            assert_eq!(keys(&answer["watermark"]), keys(&shown["watermark"]));
            assert!(answer["batch_version"].is_u64() && answer["complete"] == true);
        } else {
            assert!(
                !answer["rows"].as_array().unwrap().is_empty(),
                "{command}: {answer}"
            );
        }
    }
}
