//! The librdkafka driver (the `rdkafka` crate): the standard client behaviour, measured the
//! same way as the native driver (see [`crate::run`]).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::TopicPartitionList;

use crate::shared::{unix_nanos, Shared};
use crate::stats::{due_offset, histogram, record};
use crate::workload::Workload;

/// How long to wait for the broker to answer at all.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn config(bootstrap: &str, extra: &[(String, String)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("socket.connection.setup.timeout.ms", "10000");
    for (k, v) in extra {
        c.set(k, v);
    }
    c
}

pub async fn ensure_topic(
    w: &Workload,
    bootstrap: &str,
    extra: &[(String, String)],
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = config(bootstrap, extra).create()?;
    let metadata = admin
        .inner()
        // All topics: asking for one by name makes some brokers auto-create it.
        .fetch_metadata(None, CONNECT_TIMEOUT)
        .with_context(|| format!("broker {bootstrap} does not answer"))?;
    let names = w.topic_names();
    let mut missing = Vec::new();
    for name in &names {
        match metadata
            .topics()
            .iter()
            .find(|t| t.name() == name.as_str() && t.error().is_none())
        {
            Some(t) => anyhow::ensure!(
                t.partitions().len() >= w.partitions as usize,
                "topic {name} exists with {} partitions; the workload needs {}",
                t.partitions().len(),
                w.partitions
            ),
            None => missing.push(NewTopic::new(
                name.as_str(),
                w.partitions,
                TopicReplication::Fixed(-1),
            )),
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let created = admin
        .create_topics(
            &missing,
            &AdminOptions::new().operation_timeout(Some(CONNECT_TIMEOUT)),
        )
        .await?;
    for c in created {
        match c {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => anyhow::bail!("creating topic {t}: {e}"),
        }
    }
    Ok(())
}

pub fn producer(
    w: &Workload,
    bootstrap: &str,
    extra: &[(String, String)],
    stall_timeout: Duration,
) -> anyhow::Result<FutureProducer> {
    let mut c = config(bootstrap, extra);
    c.set("acks", if w.acks == "all" { "-1" } else { &w.acks })
        .set("compression.codec", &w.compression)
        .set("linger.ms", w.linger_ms.to_string())
        .set("batch.size", w.batch_size.to_string())
        // Keyed messages go where Java clients (and the native driver) put them.
        .set("partitioner", "murmur2_random")
        .set("message.timeout.ms", stall_timeout.as_millis().to_string());
    Ok(c.create()?)
}

pub fn consumer(
    w: &Workload,
    bootstrap: &str,
    extra: &[(String, String)],
    group: &str,
    index: usize,
) -> anyhow::Result<BaseConsumer> {
    let mut c = config(bootstrap, extra);
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "latest")
        .set("fetch.wait.max.ms", "100");
    let c: BaseConsumer = c.create()?;
    let names = w.topic_names();
    if w.subscribe {
        let topics: Vec<&str> = names.iter().map(String::as_str).collect();
        c.subscribe(&topics)?;
    } else {
        // Topic-partitions split round-robin over the consumers, each from the current end.
        let mut tpl = TopicPartitionList::new();
        for slot in (0..w.slots()).filter(|s| s % w.consumers == index) {
            let (t, p) = w.split_slot(slot);
            let (_, high) = c.fetch_watermarks(&names[t], p, CONNECT_TIMEOUT)?;
            tpl.add_partition_offset(&names[t], p, rdkafka::Offset::Offset(high))?;
        }
        c.assign(&tpl)?;
    }
    Ok(c)
}

pub async fn produce(
    p: FutureProducer,
    w: Workload,
    index: usize,
    start: Instant,
    base_nanos: u64,
    shared: Arc<Shared>,
) -> anyhow::Result<()> {
    let rate = w.rate / w.producers as u64;
    let filler = vec![0x5au8; w.max_message_size()];
    let names = w.topic_names();
    let hist = Arc::new(Mutex::new(histogram()));
    let mut pending = futures::stream::FuturesUnordered::new();
    let mut i = 0u64;
    use futures::StreamExt;
    while !shared.stop_producing.load(Ordering::Relaxed) {
        let due = due_offset(i, rate, start.elapsed());
        if rate > 0 {
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                // Collect acknowledgements while waiting for the next message's turn.
                let turn = tokio::time::sleep(wait);
                tokio::pin!(turn);
                loop {
                    tokio::select! {
                        _ = &mut turn => break,
                        Some(()) = pending.next(), if !pending.is_empty() => {}
                    }
                }
            }
        }
        let due_nanos = base_nanos + due.as_nanos() as u64;
        let payload = w.payload(&filler, i, index, due_nanos);
        let key = w.key_of(i);
        let (topic, partition) = w.split_slot(w.slot_of(i));
        let mut message = FutureRecord::<Vec<u8>, Vec<u8>>::to(&names[topic]).payload(&payload);
        message = match &key {
            Some(k) => message.key(k),
            None => message.partition(partition),
        };
        let delivery = match p.send_result(message) {
            Ok(d) => d,
            Err((e, _)) => {
                // The local queue is full: wait for acknowledgements, then try again.
                if matches!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::QueueFull)) {
                    if pending.next().await.is_none() {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    continue;
                }
                shared.errors.fetch_add(1, Ordering::Relaxed);
                shared.note_error(&format!("produce: {e}"));
                i += 1;
                continue;
            }
        };
        let shared2 = shared.clone();
        let hist2 = hist.clone();
        let size = (payload.len() + key.map_or(0, |k| k.len())) as u64;
        let measuring = shared.measuring.load(Ordering::Relaxed);
        pending.push(async move {
            match delivery.await {
                Ok(Ok(_)) => {
                    shared2.acked(1, size);
                    if measuring {
                        let latency = unix_nanos().saturating_sub(due_nanos) / 1000;
                        record(&mut hist2.lock().unwrap(), latency);
                    }
                }
                Ok(Err((e, _))) => {
                    shared2.errors.fetch_add(1, Ordering::Relaxed);
                    shared2.note_error(&format!("produce: {e}"));
                }
                Err(_) => {
                    shared2.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        i += 1;
        if rate == 0 && pending.len() >= 10_000 {
            pending.next().await;
        }
        if i.is_multiple_of(1000) {
            tokio::task::yield_now().await;
        }
    }
    while pending.next().await.is_some() {}
    shared.merge_publish(&hist.lock().unwrap());
    Ok(())
}

/// Polls until the run is over (a blocking loop: run it on its own thread).
pub fn consume(c: BaseConsumer, shared: &Shared) {
    let mut hist = histogram();
    let mut idle_since: Option<Instant> = None;
    let mut ready = false;
    loop {
        let polled = c.poll(Duration::from_millis(100));
        if !ready && c.assignment().is_ok_and(|a| a.count() > 0) {
            ready = true;
            shared.consumers_ready.fetch_add(1, Ordering::Relaxed);
        }
        match polled {
            Some(Ok(m)) => {
                idle_since = None;
                shared.consumed_message(m.payload().unwrap_or_default(), &mut hist);
            }
            Some(Err(e)) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                shared.note_error(&format!("consume: {e}"));
            }
            None => {
                if shared.consumer_done(&mut idle_since) {
                    break;
                }
            }
        }
    }
    shared.merge_end_to_end(&hist);
}
