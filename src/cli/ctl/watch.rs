//! `ctl watch`: a node's events as they happen.

use iroh_raft::{ClusterEvent, EventItem};
use serde_json::json;

use super::{Cli, Failure, print_one};

/// Options of `ctl watch`.
#[derive(clap::Args, Debug)]
pub(crate) struct WatchArgs {}

/// Prints events until Ctrl-C or the node ends the stream (only subscribing is bounded by the
/// deadline).
pub(super) async fn run(cli: &Cli, _args: WatchArgs, json: bool) -> Result<(), Failure> {
    let mut events = cli.call().subscribe().await?;
    loop {
        let item = tokio::select! {
            item = events.next() => item,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        match item {
            None => return Ok(()),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(EventItem::Missed(n))) => print_one(json, json!({ "missed": n }), || {
                format!("… missed {n} events")
            }),
            Some(Ok(EventItem::Event(ev))) => print_event(json, events.last_seq, &ev),
        }
    }
}

fn print_event(json: bool, seq: u64, ev: &ClusterEvent) {
    if json {
        let value = serde_json::to_value(ev).unwrap_or(serde_json::Value::Null);
        println!("{}", json!({ "seq": seq, "event": value }));
    } else {
        println!("{seq:>6}  {ev:?}");
    }
}
