//! librdkafka's in-process mock cluster, for the demo and fast tests.

use std::sync::mpsc;
use std::thread::JoinHandle;

use rdkafka::mocking::MockCluster;

use crate::error::{Error, Result};

/// librdkafka's in-process mock cluster with the topics it was started with.
///
/// The cluster is not `Send`, so it lives on a thread of its own until this handle is
/// dropped. It speaks the Kafka protocol on a loopback port that any client can use; it keeps
/// only about 5 MiB per partition, so old messages vanish.
#[derive(Debug)]
pub struct EmbeddedBroker {
    bootstrap: String,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl EmbeddedBroker {
    /// Starts a one-broker cluster holding each of `topics`, a name and a partition count.
    pub fn start(topics: &[(&str, i32)]) -> Result<Self> {
        let (ready_tx, ready_rx) = mpsc::channel::<Result<String>>();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let topics: Vec<(String, i32)> =
            topics.iter().map(|(t, p)| ((*t).to_owned(), *p)).collect();
        let thread = std::thread::Builder::new()
            .name("embedded-broker".into())
            .spawn(move || {
                let cluster = match MockCluster::new(1) {
                    Ok(c) => c,
                    Err(e) => {
                        return drop(
                            ready_tx.send(Err(Error::client("starting the embedded broker")(e))),
                        );
                    }
                };
                for (topic, partitions) in &topics {
                    if let Err(e) = cluster.create_topic(topic, *partitions, 1) {
                        let context = format!("creating {topic} in the embedded broker");
                        return drop(ready_tx.send(Err(Error::client(context)(e))));
                    }
                }
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                let _ = stop_rx.recv();
            })
            .map_err(|e| Error::Task {
                task: "embedded broker",
                message: e.to_string(),
            })?;
        let bootstrap = ready_rx.recv().map_err(|_| Error::Task {
            task: "embedded broker",
            message: "its thread died while starting".into(),
        })??;
        Ok(Self {
            bootstrap,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The `bootstrap.servers` of the cluster.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
