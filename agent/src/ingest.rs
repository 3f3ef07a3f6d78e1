//! The ingest session, whatever carries it: a source's hello opens it, each
//! message after it goes to the ledger's task as a [`Command`], and its
//! [`Outcome`] (once stored, or refused) becomes the reply. `http.rs` carries
//! sessions over WebSocket and POST; a Kafka-topic source (DESIGN §8) would
//! be one more carrier of the same [`Ingest`].

use tally_audit::wire::{self, Refused};
use tally_audit::{Hello, Message, Reason, Reply};
use tokio::sync::oneshot;
use tracing::warn;

use crate::ledger::Session;
use crate::shared::Shared;

type AppState = std::sync::Arc<Shared>;

/// The outcome of one message, sent once it is durable (or refused).
pub(crate) type Outcome = std::result::Result<(), tally_audit::Error>;

pub(crate) enum Command {
    Hello {
        hello: Hello,
        reply: oneshot::Sender<std::result::Result<Session, tally_audit::Error>>,
    },
    Apply {
        session: Session,
        message: Message,
        done: oneshot::Sender<Outcome>,
    },
    Refused {
        session: Option<Session>,
    },
    Goodbye {
        session: Session,
    },
    /// What reading a topic's buckets from the store needs (per cluster).
    Plans {
        cluster: Option<String>,
        topic: String,
        reply: oneshot::Sender<Vec<crate::ledger::TopicPlan>>,
    },
}

/// One ingest session: the hello's session, and what its messages do.
pub(crate) struct Ingest {
    pub(crate) shared: AppState,
    pub(crate) session: Option<Session>,
    cluster: String,
}

pub(crate) enum Step {
    /// Answer now.
    Reply(Reply),
    /// Answer when the ledger (and the store) are done.
    Later(Option<u64>, oneshot::Receiver<Outcome>),
}

impl Ingest {
    pub(crate) fn new(shared: AppState) -> Self {
        Ingest {
            shared,
            session: None,
            cluster: String::new(),
        }
    }

    pub(crate) fn refuse(&self, refused: &Refused) -> Reply {
        self.shared
            .metrics
            .refused(&self.cluster, refused.error.reason);
        warn!(reason = %refused.error.reason, "ingest refused: {}", refused.error.detail);
        let _ = self.shared.commands.try_send(Command::Refused {
            session: self.session,
        });
        refused.reply()
    }

    pub(crate) async fn step(&mut self, bytes: &[u8]) -> Step {
        let message = match wire::decode(bytes, &self.shared.limits) {
            Ok(m) => m,
            Err(refused) => return Step::Reply(self.refuse(&refused)),
        };
        match (message, self.session) {
            (Message::Hello(hello), None) => {
                let (tx, rx) = oneshot::channel();
                let cluster = hello.cluster.clone();
                if self
                    .shared
                    .commands
                    .send(Command::Hello { hello, reply: tx })
                    .await
                    .is_err()
                {
                    return Step::Reply(self.refuse(&stopping()));
                }
                match rx.await {
                    Ok(Err(error)) => Step::Reply(self.refuse(&Refused { seq: None, error })),
                    Ok(Ok(session)) => {
                        self.session = Some(session);
                        self.cluster = cluster;
                        let range = self.shared.accept_range();
                        Step::Reply(Reply::Welcome {
                            bucket_width_ms: self.shared.limits.width.ms(),
                            accept_from_ms: Some(range.from_ms),
                            accept_to_ms: Some(range.to_ms),
                        })
                    }
                    Err(_) => Step::Reply(self.refuse(&stopping())),
                }
            }
            (Message::Hello(_), Some(_)) => Step::Reply(self.refuse(&Refused {
                seq: None,
                error: tally_audit::Error::new(
                    Reason::Protocol,
                    "a session is already open on this connection: send hello once",
                ),
            })),
            (message, None) => Step::Reply(self.refuse(&Refused {
                seq: message.seq(),
                error: tally_audit::Error::new(
                    Reason::Protocol,
                    format!(
                        "\"{}\" before hello: open the session with a hello first",
                        message.kind()
                    ),
                ),
            })),
            (message, Some(session)) => {
                let seq = message.seq();
                let (tx, rx) = oneshot::channel();
                let cmd = Command::Apply {
                    session,
                    message,
                    done: tx,
                };
                if self.shared.commands.send(cmd).await.is_err() {
                    return Step::Reply(self.refuse(&stopping()));
                }
                Step::Later(seq, rx)
            }
        }
    }

    pub(crate) fn close(self) {
        if let Some(session) = self.session {
            let _ = self.shared.commands.try_send(Command::Goodbye { session });
        }
    }
}

fn stopping() -> Refused {
    Refused {
        seq: None,
        error: tally_audit::Error::new(Reason::Protocol, "the agent is stopping"),
    }
}

/// Turns a finished message into its reply; `None` when it was not stored
/// (the connection then closes so the emitter resends).
pub(crate) fn settle(
    seq: Option<u64>,
    outcome: Result<Outcome, oneshot::error::RecvError>,
) -> Option<Reply> {
    match outcome {
        Ok(Ok(())) => Some(Reply::Ack {
            seq: seq.unwrap_or(0),
        }),
        Ok(Err(e)) => Some(Reply::error(seq, &e)),
        Err(_) => None,
    }
}
