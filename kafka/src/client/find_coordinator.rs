//! FindCoordinator, the coordinator cache, and the retry loop of every request that
//! goes to a group's coordinator.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;

use futures_util::future::join_all;
use kafka_protocol::messages::{ApiKey, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;

use super::request::{Api, ResponseErrors, first};
use super::transport::BrokerAddr;
use super::{Client, KafkaCode, is_transport};
use crate::{Error, Result};

impl Api for FindCoordinatorRequest {
    const KEY: ApiKey = ApiKey::FindCoordinator;
    const NAME: &'static str = "FindCoordinator";
    const MIN: i16 = 0;
    const MAX: i16 = 6;
    type Response = FindCoordinatorResponse;
}

impl ResponseErrors for FindCoordinatorResponse {
    fn first_error(&self) -> Option<i16> {
        first(
            std::iter::once(self.error_code).chain(self.coordinators.iter().map(|c| c.error_code)),
        )
    }
}

/// Why a group has no coordinator this time.
enum Missing {
    /// FindCoordinator answered this code for the group.
    Code(KafkaCode),
    /// No broker answered FindCoordinator.
    Unreachable(Error),
}

/// Per-group answers of one request to a coordinator.
pub(super) type GroupAnswers<T> = HashMap<String, Result<T, KafkaCode>>;

impl Client {
    /// The coordinator of each group: from the cache, or asked of any broker (all groups
    /// in one FindCoordinator v4+, else one request per group, concurrently).
    async fn coordinators(
        &self,
        groups: &[String],
    ) -> HashMap<String, Result<BrokerAddr, Missing>> {
        let mut found = HashMap::new();
        let mut unknown = Vec::new();
        {
            let cluster = self.cluster();
            for g in groups {
                match cluster.coordinators.get(g) {
                    Some(addr) => {
                        found.insert(g.clone(), Ok(addr.clone()));
                    }
                    None => unknown.push(g.clone()),
                }
            }
        }
        if unknown.is_empty() {
            return found;
        }
        let mut last = None;
        for broker in self.any_brokers() {
            match self.find_coordinators_at(&broker, &unknown).await {
                Ok(answers) => {
                    let mut cluster = self.cluster_mut();
                    for g in unknown {
                        let answer = match answers.get(&g) {
                            Some(Ok(addr)) => {
                                cluster.coordinators.insert(g.clone(), addr.clone());
                                Ok(addr.clone())
                            }
                            Some(Err(code)) => Err(Missing::Code(*code)),
                            None => Err(Missing::Code(KafkaCode::COORDINATOR_NOT_AVAILABLE)),
                        };
                        found.insert(g, answer);
                    }
                    return found;
                }
                Err(e) if is_transport(&e) => last = Some(e),
                Err(e) => {
                    last = Some(e);
                    break;
                }
            }
        }
        let error = last.unwrap_or(Error::NoBroker {
            api: "FindCoordinator",
        });
        let reason = error.to_string();
        let mut first = Some(error);
        for g in unknown {
            let e = first.take().unwrap_or_else(|| Error::Connection {
                broker: "any".to_owned(),
                reason: reason.clone(),
            });
            found.insert(g, Err(Missing::Unreachable(e)));
        }
        found
    }

    async fn find_coordinators_at(
        &self,
        broker: &BrokerAddr,
        groups: &[String],
    ) -> Result<HashMap<String, Result<BrokerAddr, KafkaCode>>> {
        let version = self.version_for::<FindCoordinatorRequest>(broker).await?;
        let mut answers = HashMap::new();
        if version >= 4 {
            let keys = groups
                .iter()
                .map(|g| StrBytes::from_string(g.clone()))
                .collect();
            let (response, _) = self
                .call(broker, |_| {
                    FindCoordinatorRequest::default().with_coordinator_keys(keys)
                })
                .await?;
            for c in response.coordinators {
                answers.insert(
                    c.key.as_str().to_owned(),
                    coordinator(c.error_code, &c.host, c.port),
                );
            }
        } else {
            let calls = groups.iter().map(|g| async move {
                let answer = self
                    .call(broker, |_| {
                        FindCoordinatorRequest::default().with_key(StrBytes::from_string(g.clone()))
                    })
                    .await;
                (g, answer)
            });
            for (g, answer) in join_all(calls).await {
                let (r, _) = answer?;
                answers.insert(g.clone(), coordinator(r.error_code, &r.host, r.port));
            }
        }
        Ok(answers)
    }

    /// Forgets the coordinator of `group`.
    fn forget_coordinator(&self, group: &str) {
        self.cluster_mut().coordinators.remove(group);
    }

    /// Runs `ask` (one request to a coordinator for some groups) for every group, with
    /// the coordinator's retries: a moved or loading coordinator, or one that cannot be
    /// reached, is forgotten and the group asked again after a back-off, up to the
    /// attempts of [`super::Retry`]. What still fails is that group's error
    /// (`NETWORK_EXCEPTION` when no coordinator could be reached), unless no broker
    /// answered anything at all: then the call fails.
    pub(super) async fn per_coordinator<T, F, Fut>(
        &self,
        groups: &[String],
        ask: F,
    ) -> Result<GroupAnswers<T>>
    where
        F: Fn(BrokerAddr, Vec<String>) -> Fut,
        Fut: Future<Output = Result<GroupAnswers<T>>>,
    {
        let mut results = HashMap::new();
        let mut remaining: Vec<String> = groups.to_vec();
        remaining.sort();
        remaining.dedup();
        let mut last_error: HashMap<String, KafkaCode> = HashMap::new();
        let mut answered = false;
        let mut transport_error = None;
        for attempt in 0..self.attempts() {
            if remaining.is_empty() {
                break;
            }
            self.backoff(attempt).await;
            let mut by_coordinator: BTreeMap<BrokerAddr, Vec<String>> = BTreeMap::new();
            let mut next = Vec::new();
            for (group, coordinator) in self.coordinators(&remaining).await {
                match coordinator {
                    Ok(addr) => by_coordinator.entry(addr).or_default().push(group),
                    Err(Missing::Code(code)) => {
                        answered = true;
                        if code.is_coordinator_moving() {
                            last_error.insert(group.clone(), code);
                            next.push(group);
                        } else {
                            results.insert(group, Err(code));
                        }
                    }
                    Err(Missing::Unreachable(e)) => {
                        if !is_transport(&e) && !matches!(e, Error::NoBroker { .. }) {
                            return Err(e);
                        }
                        last_error.insert(group.clone(), KafkaCode::NETWORK_EXCEPTION);
                        next.push(group);
                        transport_error = Some(e);
                    }
                }
            }
            let calls = by_coordinator.into_iter().map(|(addr, groups)| {
                let answer = ask(addr, groups.clone());
                async move { (groups, answer.await) }
            });
            for (groups, answer) in join_all(calls).await {
                let answers = match answer {
                    Ok(answers) => {
                        answered = true;
                        answers
                    }
                    Err(e) if is_transport(&e) => {
                        for g in groups {
                            self.forget_coordinator(&g);
                            last_error.insert(g.clone(), KafkaCode::NETWORK_EXCEPTION);
                            next.push(g);
                        }
                        transport_error = Some(e);
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let mut answers = answers;
                for g in groups {
                    match answers.remove(&g) {
                        Some(Ok(value)) => {
                            results.insert(g, Ok(value));
                        }
                        Some(Err(code)) if code.is_coordinator_moving() => {
                            self.forget_coordinator(&g);
                            last_error.insert(g.clone(), code);
                            next.push(g);
                        }
                        Some(Err(code)) => {
                            results.insert(g, Err(code));
                        }
                        None => {
                            self.forget_coordinator(&g);
                            last_error.insert(g.clone(), KafkaCode::NOT_COORDINATOR);
                            next.push(g);
                        }
                    }
                }
            }
            remaining = next;
        }
        super::settle(
            results,
            remaining,
            &last_error,
            answered,
            transport_error,
            KafkaCode::COORDINATOR_NOT_AVAILABLE,
        )
    }
}

fn coordinator(code: i16, host: &StrBytes, port: i32) -> Result<BrokerAddr, KafkaCode> {
    if code != 0 {
        return Err(KafkaCode(code));
    }
    BrokerAddr::from_wire(host.as_str(), port).ok_or(KafkaCode::COORDINATOR_NOT_AVAILABLE)
}
