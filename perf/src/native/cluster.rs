//! The cluster as the native client sees it: brokers from Metadata, one connection per broker,
//! the leader of every partition of the workload's topic.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, BrokerId, CreateTopicsRequest, CreateTopicsResponse, MetadataRequest, MetadataResponse,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::conn::{Conn, CONNECT_TIMEOUT};

pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const LEADER_NOT_AVAILABLE: i16 = 5;
const TOPIC_ALREADY_EXISTS: i16 = 36;

pub fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

pub struct Cluster {
    bootstrap: Arc<Conn>,
    timeout: Duration,
    brokers: Mutex<HashMap<i32, String>>,
    conns: tokio::sync::Mutex<HashMap<i32, Arc<Conn>>>,
}

impl Cluster {
    /// Connects to the first bootstrap address (of a comma-separated list) that answers.
    /// `timeout`: how long any request may wait for its answer.
    pub async fn connect(bootstrap: &str, timeout: Duration) -> anyhow::Result<Cluster> {
        let mut last = None;
        for addr in bootstrap
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
        {
            match Conn::connect(addr, timeout).await {
                Ok(c) => {
                    return Ok(Cluster {
                        bootstrap: c,
                        timeout,
                        brokers: Mutex::new(HashMap::new()),
                        conns: tokio::sync::Mutex::new(HashMap::new()),
                    })
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("no bootstrap address given")))
    }

    pub fn any(&self) -> &Arc<Conn> {
        &self.bootstrap
    }

    /// The leader of each partition of `topic` (index = partition), or None if the topic does
    /// not exist. Partitions without a leader yet are -1.
    pub async fn leaders(&self, topic: &str) -> anyhow::Result<Option<Vec<i32>>> {
        let c = &self.bootstrap;
        let v = c.version(ApiKey::Metadata, 1..=12)?;
        let mut req = MetadataRequest::default().with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(topic_name(topic))),
        ]));
        if v >= 4 {
            req.allow_auto_topic_creation = false;
        }
        let answer: MetadataResponse = c.call_at(ApiKey::Metadata, v, &req).await?;
        {
            let mut brokers = self.brokers.lock().unwrap();
            for b in &answer.brokers {
                brokers.insert(b.node_id.0, format!("{}:{}", b.host, b.port));
            }
        }
        let Some(t) = answer
            .topics
            .iter()
            .find(|t| t.name.as_ref().is_some_and(|n| n.as_str() == topic))
        else {
            return Ok(None);
        };
        match t.error_code {
            0 | LEADER_NOT_AVAILABLE => {}
            UNKNOWN_TOPIC_OR_PARTITION => return Ok(None),
            e => bail!("metadata for topic {topic}: error {e}"),
        }
        let mut leaders = vec![-1; t.partitions.len()];
        for p in &t.partitions {
            if let Some(slot) = leaders.get_mut(p.partition_index as usize) {
                *slot = if p.error_code == 0 { p.leader_id.0 } else { -1 };
            }
        }
        Ok(Some(leaders))
    }

    /// Creates `topic` unless it exists, then waits until every partition has a leader.
    /// An existing topic must have at least `partitions` partitions.
    pub async fn ensure_topic(&self, topic: &str, partitions: i32) -> anyhow::Result<Vec<i32>> {
        if self.leaders(topic).await?.is_none() {
            let c = &self.bootstrap;
            let v = c.version(ApiKey::CreateTopics, 2..=7)?;
            let req = CreateTopicsRequest::default()
                .with_timeout_ms(CONNECT_TIMEOUT.as_millis() as i32)
                .with_topics(vec![CreatableTopic::default()
                    .with_name(topic_name(topic))
                    .with_num_partitions(partitions)
                    // -1: the broker's default replication (v4+).
                    .with_replication_factor(if v >= 4 { -1 } else { 1 })]);
            let answer: CreateTopicsResponse = c.call_at(ApiKey::CreateTopics, v, &req).await?;
            for t in &answer.topics {
                if t.error_code != 0 && t.error_code != TOPIC_ALREADY_EXISTS {
                    bail!(
                        "creating topic {topic}: error {} {}",
                        t.error_code,
                        t.error_message.as_deref().unwrap_or("")
                    );
                }
            }
        }
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        loop {
            if let Some(leaders) = self.leaders(topic).await? {
                if leaders.len() < partitions as usize {
                    bail!(
                        "topic {topic} exists with {} partitions; the workload needs {partitions}",
                        leaders.len()
                    );
                }
                if leaders.iter().all(|l| *l >= 0) {
                    return Ok(leaders);
                }
            }
            if Instant::now() > deadline {
                bail!("topic {topic}: partitions without a leader after {CONNECT_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The connection to broker `node` (opened on first use).
    pub async fn broker(&self, node: i32) -> anyhow::Result<Arc<Conn>> {
        let mut conns = self.conns.lock().await;
        if let Some(c) = conns.get(&node).filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let addr = self
            .brokers
            .lock()
            .unwrap()
            .get(&node)
            .cloned()
            .ok_or_else(|| anyhow!("broker {node} is not in the metadata"))?;
        let c = Conn::connect(&addr, self.timeout).await?;
        conns.insert(node, c.clone());
        Ok(c)
    }

    /// Connects to `host:port` as broker `node` (a coordinator found by FindCoordinator).
    pub async fn broker_at(&self, node: BrokerId, addr: String) -> anyhow::Result<Arc<Conn>> {
        self.brokers.lock().unwrap().insert(node.0, addr);
        self.broker(node.0).await
    }
}
