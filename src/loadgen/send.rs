//! Sending one request to a sluice target: `POST /v1/requests` to the ingress (202 is
//! acceptance, anything else a refusal counted by status), or a version-1 envelope
//! produced straight to the request topic (acks=all, idempotent; acceptance is the
//! broker's acknowledgement); and the schedule that starts every request on time.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{json, Map, Value};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::direct::Direct;
use super::ledger::Ledger;
use super::plan::Plan;
use super::LoadgenArgs;
use crate::config::Config;
use crate::envelope::{self, headers, Request};
use crate::kafka::producer::{Outgoing, Producer, ProducerLimits};

/// How long one `POST /v1/requests` may take before it counts as refused (`transport`).
pub(crate) const INGRESS_TIMEOUT: Duration = Duration::from_secs(30);

/// What every request asks for.
#[derive(Debug, Clone)]
pub struct Payload {
    pub model: String,
    pub prompt: String,
    pub max_tokens: u64,
    /// `temperature`, when given (0 makes llama.cpp's answers repeatable).
    pub temperature: Option<f64>,
    /// Relative deadline, turned into an absolute `deadline_ms` at send time.
    pub deadline: Option<Duration>,
}

impl Payload {
    /// The OpenAI chat request body.
    pub fn chat_body(&self) -> Map<String, Value> {
        let body = json!({
            "model": self.model,
            "messages": [{"role": "user", "content": self.prompt}],
            "max_tokens": self.max_tokens,
        });
        let mut map = match body {
            Value::Object(map) => map,
            _ => unreachable!("json! of an object literal is an object"),
        };
        if let Some(temperature) = self.temperature {
            map.insert("temperature".into(), json!(temperature));
        }
        map
    }

    /// The absolute deadline for a request sent now.
    fn deadline_ms(&self) -> Option<u64> {
        self.deadline
            .map(|d| envelope::now_ms() + u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// Where requests go.
pub enum Target {
    /// `POST {base}/v1/requests`.
    Ingress {
        client: reqwest::Client,
        url: String,
    },
    /// Straight to the request topic.
    Kafka { producer: Producer, topic: String },
    /// Straight to the backend, no sluice (the baseline).
    Direct(Direct),
}

impl Target {
    /// `ingress`, `kafka` or `direct`.
    pub fn mode(&self) -> &'static str {
        match self {
            Target::Ingress { .. } => "ingress",
            Target::Kafka { .. } => "kafka",
            Target::Direct(_) => "direct",
        }
    }

    /// Sends request number `seq` with a fresh id and records it in `ledger`.
    pub async fn send(&self, seq: u64, payload: &Payload, ledger: &Ledger) {
        let id = envelope::new_id();
        let metadata = json!({ "loadgen_seq": seq });
        ledger.sending(&id);
        match self {
            Target::Ingress { client, url } => {
                let mut submit =
                    json!({ "id": id, "body": payload.chat_body(), "metadata": metadata });
                if let Some(deadline_ms) = payload.deadline_ms() {
                    submit["deadline_ms"] = json!(deadline_ms);
                }
                match client
                    .post(url)
                    .timeout(INGRESS_TIMEOUT)
                    .json(&submit)
                    .send()
                    .await
                {
                    Ok(response) if response.status().as_u16() == 202 => ledger.accepted(&id),
                    Ok(response) => ledger.refused(&id, response.status().as_u16().to_string()),
                    Err(e) => {
                        tracing::debug!(error = %e, "POST /v1/requests failed");
                        ledger.refused(&id, "transport".into());
                    }
                }
            }
            Target::Kafka { producer, topic } => {
                let request = Request {
                    v: envelope::VERSION,
                    id: id.clone(),
                    tenant: None,
                    deadline_ms: payload.deadline_ms(),
                    lane: None,
                    reply_to: None,
                    ordering_key: None,
                    fallback: None,
                    body: payload.chat_body(),
                    metadata: Some(metadata),
                };
                let value = serde_json::to_vec(&request)
                    .expect("a Request always serializes: string keys, no NaN");
                let sent = producer
                    .send(Outgoing {
                        topic,
                        key: &id,
                        payload: &value,
                        headers: vec![(headers::ID, Some(id.as_bytes()))],
                        timestamp: None,
                    })
                    .await;
                match sent {
                    Ok(_) => ledger.accepted(&id),
                    Err(e) => {
                        tracing::debug!(error = %e, "producing a request failed");
                        let reason = e
                            .rdkafka_error_code()
                            .map_or_else(|| "kafka".to_string(), |code| format!("kafka {code:?}"));
                        ledger.refused(&id, reason);
                    }
                }
            }
            Target::Direct(direct) => direct.call(&id, payload.chat_body(), ledger).await,
        }
    }
}

/// The target the flags name, and how the report names it.
pub fn target(
    config: &Config,
    args: &LoadgenArgs,
    http: &reqwest::Client,
) -> anyhow::Result<(Target, String)> {
    if let Some(base) = &args.ingress {
        let url = format!("{}/v1/requests", base.trim_end_matches('/'));
        return Ok((
            Target::Ingress {
                client: http.clone(),
                url: url.clone(),
            },
            url,
        ));
    }
    if let Some(base) = &args.direct {
        let direct = Direct::new(http.clone(), base, args.direct_retries.unwrap_or(0));
        let url = direct.url().to_string();
        return Ok((Target::Direct(direct), url));
    }
    let producer = Producer::new(
        &config.kafka,
        ProducerLimits {
            delivery_timeout: Duration::from_secs(30),
            queue_wait: Duration::from_secs(30),
            queue_max_kbytes: 256 * 1024,
        },
    )
    .context("creating the Kafka producer")?;
    let topic = config.request_topic_for(None);
    let described = format!("{topic} on {}", config.kafka.bootstrap_servers);
    Ok((Target::Kafka { producer, topic }, described))
}

/// Starts every request of `plan` on schedule, each in its own task; returns once the
/// last one has started. Tasks still running when the run ends are dropped with the
/// runtime.
pub(crate) async fn send_all(
    plan: Plan,
    target: Arc<Target>,
    payload: Payload,
    ledger: Arc<Ledger>,
    shutdown: CancellationToken,
) {
    let payload = Arc::new(payload);
    let room = Arc::new(Semaphore::new(plan.concurrency));
    let start = tokio::time::Instant::now();
    for seq in 0..plan.requests {
        let permit = match plan.due(seq) {
            Some(due) => {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep_until(start + due) => None,
                }
            }
            None => tokio::select! {
                _ = shutdown.cancelled() => break,
                permit = room.clone().acquire_owned() => {
                    Some(permit.expect("the send semaphore is never closed"))
                }
            },
        };
        let (target, payload, ledger) = (target.clone(), payload.clone(), ledger.clone());
        tokio::spawn(async move {
            target.send(seq, &payload, &ledger).await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_body_carries_model_prompt_and_tokens() {
        let payload = Payload {
            model: "m".into(),
            prompt: "hi".into(),
            max_tokens: 32,
            temperature: None,
            deadline: Some(Duration::from_secs(5)),
        };
        let body = Value::Object(payload.chat_body());
        assert_eq!(body["model"], "m");
        assert_eq!(body["messages"][0]["content"], "hi");
        assert_eq!(body["max_tokens"], 32);
        let deadline = payload.deadline_ms().unwrap();
        let now = envelope::now_ms();
        assert!(
            deadline > now + 4_000 && deadline <= now + 5_000,
            "{deadline} vs {now}"
        );
    }
}
