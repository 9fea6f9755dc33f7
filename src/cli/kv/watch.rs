//! `kv watch`: a key's (or a prefix's) changes as they are applied, resumed on another member
//! from the first revision not printed when the one watched goes away.

use std::time::Instant;

use iroh_raft::{
    actors::wire::MgmtErrorKind,
    kv::{WatchEvent, WatchEventKind, WatchQuery},
    mgmt::ClientError,
};
use serde_json::json;

use super::super::ctl::{Cli, Failure};

/// The longest pause between two attempts to resume.
const MAX_BACKOFF: std::time::Duration = std::time::Duration::from_secs(1);

fn print_event(json: bool, ev: &WatchEvent) {
    let kind = match ev.kind {
        WatchEventKind::Put => "PUT",
        WatchEventKind::Delete => "DELETE",
    };
    let kv = &ev.kv;
    if json {
        let line = json!({
            "revision": kv.mod_revision, "type": kind.to_lowercase(), "key": kv.key,
            "value": matches!(ev.kind, WatchEventKind::Put).then_some(&kv.value),
            "create_revision": kv.create_revision, "version": kv.version,
            "prev_value": ev.prev.as_ref().map(|p| &p.value),
        });
        println!("{line}");
    } else {
        match ev.kind {
            WatchEventKind::Put => println!(
                "{:>8}  {kind:<6}  {}  {}",
                kv.mod_revision, kv.key, kv.value
            ),
            WatchEventKind::Delete => println!("{:>8}  {kind:<6}  {}", kv.mod_revision, kv.key),
        }
    }
}

/// The watcher refused to go on (the revision is no longer kept): resuming cannot help.
fn refused(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Failed {
            kind: MgmtErrorKind::Refused | MgmtErrorKind::Forbidden | MgmtErrorKind::Unsupported,
            ..
        }
    )
}

pub(super) async fn run(
    cli: &Cli,
    query: WatchQuery,
    count: Option<u64>,
    json: bool,
) -> Result<(), Failure> {
    let mut next = query.start_revision;
    let mut printed = 0u64;
    let mut first = true;
    // Since when resuming has failed (it gives up after --timeout of failures).
    let mut failing: Option<Instant> = None;
    let mut backoff = std::time::Duration::from_millis(50);
    if count == Some(0) {
        return Ok(());
    }
    loop {
        let q = WatchQuery {
            start_revision: next,
            ..query.clone()
        };
        // The first attempt within the command's deadline; a resumption with a whole timeout.
        let client = if first { cli.call() } else { cli.fresh() };
        let started = tokio::select! {
            w = client.kv_watch(&q) => w,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let mut watch = match started {
            Ok(w) => w,
            Err(e) if first || refused(&e) => return Err(e.into()),
            Err(e) => {
                let since = *failing.get_or_insert_with(Instant::now);
                if since.elapsed() > client.timeout() {
                    return Err(e.into());
                }
                eprintln!("watch: cannot resume from revision {next} yet: {e}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        first = false;
        failing = None;
        eprintln!(
            "watch: following node {} from revision {}",
            watch.node_id(),
            match next {
                0 => "now".to_string(),
                n => n.to_string(),
            }
        );
        backoff = std::time::Duration::from_millis(50);
        loop {
            let item = tokio::select! {
                item = watch.next() => item,
                _ = tokio::signal::ctrl_c() => return Ok(()),
            };
            match item {
                Some(Ok(batch)) => {
                    for ev in &batch.events {
                        print_event(json, ev);
                        printed += 1;
                        if count.is_some_and(|n| printed >= n) {
                            return Ok(());
                        }
                    }
                    next = watch.next_revision();
                }
                Some(Err(e)) if refused(&e) => return Err(e.into()),
                Some(Err(e)) => {
                    eprintln!("watch: {e}; resuming from revision {next}");
                    break;
                }
                None => {
                    eprintln!("watch: the member ended the stream; resuming from revision {next}");
                    break;
                }
            }
        }
    }
}
