//! Operator verbs for streams: `shoal stream list|show|read|append|delete` and the consumer
//! group verbs `group-create|group-delete|group-read|ack`.
//!
//! Each verb is one call to `/api/v1/streams` (see `api/streams.rs`) and prints its JSON
//! answer; `group-read --ack` acknowledges what it printed in a second call, so a consumer that
//! crashes in between gets the records again with `--pending`.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{Value, json};

use crate::cli::{Api, Endpoint, encode, finish, runtime};

/// `shoal stream ...`
#[derive(Debug, Subcommand)]
pub enum StreamCmd {
    /// List the streams with their lengths and consumer groups.
    List,
    /// Print one stream's length, first and last ids and consumer groups.
    Show {
        /// Stream name.
        stream: String,
    },
    /// Print records by offset: the oldest, or those after `--after`.
    Read {
        /// Stream name.
        stream: String,
        /// Only records after this id (`MS-SEQ`), e.g. the `lastId` of the previous read.
        #[arg(long)]
        after: Option<String>,
        /// Most records (default 100, at most 10000).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Append a record (JSON data) to a stream.
    Append {
        /// Stream name (created by its first record).
        stream: String,
        /// The record: JSON text, or `-` for standard input.
        data: String,
        /// Partition key kept with the record.
        #[arg(long, default_value = "")]
        key: String,
    },
    /// Delete a stream and its consumer groups.
    Delete {
        /// Stream name.
        stream: String,
    },
    /// Create a consumer group.
    GroupCreate {
        /// Stream name.
        stream: String,
        /// Group name.
        group: String,
        /// `beginning` (default), `end` (only records appended from now) or an id to start after.
        #[arg(long)]
        start: Option<String>,
    },
    /// Delete a consumer group.
    GroupDelete {
        /// Stream name.
        stream: String,
        /// Group name.
        group: String,
    },
    /// Deliver the group's next records to a consumer.
    GroupRead {
        /// Stream name.
        stream: String,
        /// Group name.
        group: String,
        /// This consumer's name.
        #[arg(long)]
        consumer: String,
        /// Most records (default 100).
        #[arg(long)]
        limit: Option<usize>,
        /// Wait up to this many milliseconds for records when there are none (at most 30000).
        #[arg(long, default_value_t = 0)]
        wait_ms: u64,
        /// Re-read the records this consumer was given and did not acknowledge.
        #[arg(long)]
        pending: bool,
        /// Acknowledge the records once printed.
        #[arg(long)]
        ack: bool,
    },
    /// Acknowledge records of a group.
    Ack {
        /// Stream name.
        stream: String,
        /// Group name.
        group: String,
        /// Record ids (`MS-SEQ`).
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

/// Runs `shoal stream ...`.
pub fn stream(ep: &Endpoint, cmd: StreamCmd) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(c) => return c,
    };
    let api = Api::new(ep);
    let path = |s: &str, rest: &str| format!("/streams/{}{rest}", encode(s));
    finish(&rt, async move {
        match cmd {
            StreamCmd::List => api.get("/streams", &[]).await,
            StreamCmd::Show { stream } => api.get(&path(&stream, ""), &[]).await,
            StreamCmd::Read { stream, after, limit } => {
                let mut q = Vec::new();
                if let Some(a) = after {
                    q.push(format!("after={}", encode(&a)));
                }
                if let Some(l) = limit {
                    q.push(format!("limit={l}"));
                }
                api.get(&path(&stream, "/records"), &q).await
            }
            StreamCmd::Append { stream, data, key } => {
                let text = crate::cli::read_arg(&data)?;
                let data: Value =
                    serde_json::from_str(&text).map_err(|e| format!("the record is not JSON: {e}"))?;
                api.post(
                    &path(&stream, "/records"),
                    json!({ "partitionKey": key, "data": data }),
                )
                .await
            }
            StreamCmd::Delete { stream } => api.delete(&path(&stream, ""), &[]).await,
            StreamCmd::GroupCreate { stream, group, start } => {
                api.post(
                    &path(&stream, "/groups"),
                    json!({ "groupName": group, "start": start }),
                )
                .await
            }
            StreamCmd::GroupDelete { stream, group } => {
                api.delete(&path(&stream, &format!("/groups/{}", encode(&group))), &[])
                    .await
            }
            StreamCmd::GroupRead {
                stream,
                group,
                consumer,
                limit,
                wait_ms,
                pending,
                ack,
            } => {
                let group_path = path(&stream, &format!("/groups/{}", encode(&group)));
                let read = api
                    .post(
                        &format!("{group_path}/read"),
                        json!({ "consumer": consumer, "limit": limit, "waitMs": wait_ms, "pending": pending }),
                    )
                    .await?;
                if ack {
                    let ids: Vec<Value> = read["records"]
                        .as_array()
                        .map(|r| r.iter().map(|r| r["id"].clone()).collect())
                        .unwrap_or_default();
                    if !ids.is_empty() {
                        api.post(&format!("{group_path}/ack"), json!({ "ids": ids }))
                            .await?;
                    }
                }
                Ok(read)
            }
            StreamCmd::Ack { stream, group, ids } => {
                api.post(
                    &path(&stream, &format!("/groups/{}/ack", encode(&group))),
                    json!({ "ids": ids }),
                )
                .await
            }
        }
    })
}
