//! `iroh-raft kv`: the built-in KV store of a cluster, etcdctl's verbs: put, get (one key or a
//! prefix, linearizable), range, delete (one key or a prefix), cas, txn and watch, with `ctl`'s
//! connection options, deadline and exit codes (plus 5: a compare-and-swap found another
//! value, nothing changed). Keys carry etcd's revisions (`--json` shows them).
//!
//! A value comes from the command line, from stdin (`put KEY -`) or from a file
//! (`--value-file PATH`), exactly as given; it must be UTF-8 and its command must fit the
//! nodes' command size limit (`MAX_COMMAND_SIZE`, 4 MiB): a larger one is refused before
//! anything is sent.

use std::{
    io::Read,
    path::{Path, PathBuf},
};

use iroh_raft::{
    KvResponse,
    actors::wire::MAX_COMMAND_SIZE,
    kv::{KeyValue, KvQuery, RangeResult, Txn, TxnOpResult, WatchQuery},
    mgmt::ClientError,
};
use serde_json::json;

use super::ctl::{Cli, Connect, Failure, print_one};

mod txn;
mod watch;

/// Options of `iroh-raft kv`.
#[derive(clap::Args, Debug)]
pub(crate) struct KvArgs {
    #[command(flatten)]
    connect: Connect,
    #[command(subcommand)]
    command: KvCmd,
}

#[derive(clap::Subcommand, Debug)]
enum KvCmd {
    /// Set KEY to VALUE (`-`: read it from stdin), or to the contents of --value-file.
    Put {
        /// The key.
        key: String,
        /// The value, or `-` to read it from stdin.
        #[arg(required_unless_present = "value_file", conflicts_with = "value_file")]
        value: Option<String>,
        /// Read the value from this file.
        #[arg(long, value_name = "PATH")]
        value_file: Option<PathBuf>,
    },
    /// Read KEY (linearizable), or with --prefix every key that starts with it, in key order.
    /// Human output: the value alone for one key; KEY and VALUE lines for --prefix (like
    /// etcdctl). Exit 1 when a single KEY is not found (with --json: exit 0, no kvs).
    Get {
        /// The key (or prefix).
        key: String,
        /// Read every key that starts with KEY.
        #[arg(long)]
        prefix: bool,
        /// At most this many keys (0: as many as one answer holds, 10,000).
        #[arg(long, default_value_t = 0)]
        limit: u64,
        /// Print keys only.
        #[arg(long)]
        keys_only: bool,
    },
    /// Read the keys from FROM up to TO (exclusive; without TO: to the end), in key order
    /// (linearizable).
    Range {
        /// The first key.
        from: String,
        /// The end (exclusive).
        to: Option<String>,
        /// At most this many keys (0: as many as one answer holds, 10,000).
        #[arg(long, default_value_t = 0)]
        limit: u64,
        /// Print keys only.
        #[arg(long)]
        keys_only: bool,
    },
    /// Delete KEY, or with --prefix every key that starts with it.
    Delete {
        /// The key (or prefix).
        key: String,
        /// Delete every key that starts with KEY.
        #[arg(long)]
        prefix: bool,
    },
    /// Compare and swap: set KEY to --new (or delete it with --delete) only if its value is
    /// --expect (or it is absent with --expect-absent). Exit 5 when the value was not the
    /// expected one (nothing changed; the current value is printed).
    #[command(group = clap::ArgGroup::new("expected").required(true))]
    #[command(group = clap::ArgGroup::new("outcome").required(true))]
    Cas {
        /// The key.
        key: String,
        /// The value KEY must have.
        #[arg(long, group = "expected", value_name = "VALUE")]
        expect: Option<String>,
        /// KEY must be absent.
        #[arg(long, group = "expected")]
        expect_absent: bool,
        /// The value to set.
        #[arg(long, group = "outcome", value_name = "VALUE")]
        new: Option<String>,
        /// Delete KEY.
        #[arg(long, group = "outcome")]
        delete: bool,
    },
    /// A transaction, applied atomically: compares, then the operations run when they all
    /// hold, else the others. Read from --file or stdin in etcdctl's form: compare lines
    /// (`value("k") = "v"`, `version("k") = "0"`, `mod("k") > "5"`, `create("k") != "3"`), a
    /// blank line, operations (`put K V`, `del K`, `get K`), a blank line, operations.
    /// Prints SUCCESS or FAILURE, then each operation's result; exit 0 either way.
    Txn {
        /// Read the transaction from this file (default: stdin).
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
    },
    /// Print the changes of KEY (or of every key under it with --prefix) as they are applied,
    /// from --rev (default: the next change). Resumes on another member without a gap when the
    /// one it watches goes away. Ctrl-C ends it.
    Watch {
        /// The key (or prefix).
        key: String,
        /// Watch every key that starts with KEY.
        #[arg(long)]
        prefix: bool,
        /// The first revision to print (0: the next change). Exit 1 when the members no longer
        /// keep it.
        #[arg(long, default_value_t = 0)]
        rev: u64,
        /// Exit after this many changes.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
}

/// Reads a value of at most [`MAX_COMMAND_SIZE`] bytes (anything longer could not be sent).
fn read_value(what: &str, input: impl Read) -> Result<String, Failure> {
    let mut bytes = Vec::new();
    input
        .take(MAX_COMMAND_SIZE as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Failure::usage(format!("reading the value from {what}: {e}")))?;
    if bytes.len() > MAX_COMMAND_SIZE {
        return Err(Failure::usage(format!(
            "the value from {what} is larger than the command limit of {MAX_COMMAND_SIZE} bytes; nothing was sent"
        )));
    }
    String::from_utf8(bytes)
        .map_err(|_| Failure::usage(format!("the value from {what} is not UTF-8 text")))
}

/// The contents of `path`, or of stdin without one, as [`read_value`] reads them.
fn read_file_or_stdin(path: Option<&Path>) -> Result<String, Failure> {
    let Some(path) = path else {
        return read_value("stdin", std::io::stdin().lock());
    };
    let file = std::fs::File::open(path)
        .map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?;
    read_value(&path.display().to_string(), file)
}

fn value_of(value: Option<String>, file: Option<PathBuf>) -> Result<String, Failure> {
    match (value, file) {
        (Some(v), _) if v == "-" => read_file_or_stdin(None),
        (Some(v), _) => Ok(v),
        (None, Some(path)) => read_file_or_stdin(Some(&path)),
        (None, None) => Err(Failure::usage("no value given".into())),
    }
}

pub(crate) async fn run_kv(args: KvArgs) -> Result<(), Failure> {
    // A value or transaction is read before connecting: a bad one costs no round trip.
    let input = match &args.command {
        KvCmd::Put {
            value, value_file, ..
        } => Input::Value(value_of(value.clone(), value_file.clone())?),
        KvCmd::Txn { file } => {
            let text = read_file_or_stdin(file.as_deref())?;
            Input::Txn(txn::parse(&text).map_err(|e| Failure::usage(format!("txn: {e}")))?)
        }
        _ => Input::None,
    };
    let cli = Cli::new(&args.connect).await?;
    let result = kv(&cli, args.command, input, args.connect.json).await;
    cli.close().await;
    result
}

/// What a command read from the command line, a file or stdin before connecting.
enum Input {
    None,
    Value(String),
    Txn(Txn),
}

fn kv_json(kv: &KeyValue) -> serde_json::Value {
    json!({
        "key": kv.key, "value": kv.value, "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision, "version": kv.version,
    })
}

/// Prints a read: JSON, the value alone for a single key, or KEY and VALUE lines.
fn print_range(json: bool, r: &RangeResult, single: bool, keys_only: bool) {
    if json {
        let kvs: Vec<_> = r.kvs.iter().map(kv_json).collect();
        println!(
            "{}",
            json!({ "revision": r.revision, "count": kvs.len(), "more": r.more, "kvs": kvs })
        );
        return;
    }
    for kv in &r.kvs {
        match (single, keys_only) {
            (_, true) => println!("{}", kv.key),
            (true, false) => println!("{}", kv.value),
            (false, false) => println!("{}\n{}", kv.key, kv.value),
        }
    }
    if r.more {
        eprintln!("(more keys follow: raise --limit, or read from the key after the last one)");
    }
}

async fn kv(cli: &Cli, cmd: KvCmd, input: Input, json: bool) -> Result<(), Failure> {
    match cmd {
        KvCmd::Put { key, .. } => {
            let Input::Value(value) = input else {
                return Err(Failure::usage("no value given".into()));
            };
            let r = cli.call().kv_put(&key, &value).await.map_err(too_large)?;
            print_one(
                json,
                json!({ "key": key, "previous": r.previous, "revision": r.revision }),
                || "OK".into(),
            );
        }
        KvCmd::Txn { .. } => {
            let Input::Txn(txn) = input else {
                return Err(Failure::usage("no transaction given".into()));
            };
            let r = cli.call().kv_txn(txn).await.map_err(too_large)?;
            print_txn(json, &r);
        }
        KvCmd::Delete { key, prefix } => {
            let r = match prefix {
                true => cli.call().kv_delete_prefix(&key).await?,
                false => cli.call().kv_delete(&key).await?,
            };
            let deleted = if prefix {
                r.deleted
            } else {
                u64::from(r.previous.is_some())
            };
            print_one(
                json,
                json!({ "key": key, "prefix": prefix, "deleted": deleted, "previous": r.previous, "revision": r.revision }),
                || deleted.to_string(),
            );
        }
        KvCmd::Get {
            key,
            prefix: false,
            keys_only,
            ..
        } => {
            let r = cli
                .call()
                .kv_query(&KvQuery::Get { key: key.clone() })
                .await?;
            if r.kvs.is_empty() && !json {
                return Err(Failure {
                    code: 1,
                    message: format!("{key}: not found"),
                });
            }
            print_range(json, &r, true, keys_only);
        }
        KvCmd::Get {
            key,
            prefix: true,
            limit,
            keys_only,
        } => {
            let r = cli.call().kv_prefix(&key, limit).await?;
            print_range(json, &r, false, keys_only);
        }
        KvCmd::Range {
            from,
            to,
            limit,
            keys_only,
        } => {
            let r = cli.call().kv_range(&from, to.as_deref(), limit).await?;
            print_range(json, &r, false, keys_only);
        }
        KvCmd::Cas {
            key, expect, new, ..
        } => {
            let r = cli
                .call()
                .kv_cas(&key, expect.as_deref(), new.as_deref())
                .await?;
            print_one(
                json,
                json!({ "key": key, "swapped": r.applied, "previous": r.previous, "revision": r.revision }),
                || match r.applied {
                    true => "OK".into(),
                    false => match &r.previous {
                        Some(v) => format!("not swapped: the value is {v:?}"),
                        None => "not swapped: the key is absent".into(),
                    },
                },
            );
            if !r.applied {
                return Err(Failure {
                    code: 5,
                    message: format!("{key}: compare failed, nothing changed"),
                });
            }
        }
        KvCmd::Watch {
            key,
            prefix,
            rev,
            count,
        } => {
            let query = WatchQuery {
                key,
                prefix,
                start_revision: rev,
            };
            watch::run(cli, query, count, json).await?;
        }
    }
    Ok(())
}

fn print_txn(json: bool, r: &KvResponse) {
    if json {
        let results: Vec<serde_json::Value> = r
            .results
            .iter()
            .map(|res| match res {
                TxnOpResult::Put { previous } => {
                    json!({ "op": "put", "previous": previous.as_ref().map(kv_json) })
                }
                TxnOpResult::Delete { previous } => {
                    json!({ "op": "delete", "deleted": u64::from(previous.is_some()), "previous": previous.as_ref().map(kv_json) })
                }
                TxnOpResult::Get { kv } => json!({ "op": "get", "kv": kv.as_ref().map(kv_json) }),
            })
            .collect();
        println!(
            "{}",
            json!({ "succeeded": r.applied, "revision": r.revision, "results": results })
        );
        return;
    }
    println!("{}", if r.applied { "SUCCESS" } else { "FAILURE" });
    for res in &r.results {
        println!();
        match res {
            TxnOpResult::Put { .. } => println!("OK"),
            TxnOpResult::Delete { previous } => println!("{}", u64::from(previous.is_some())),
            TxnOpResult::Get { kv: Some(kv) } => println!("{}\n{}", kv.key, kv.value),
            TxnOpResult::Get { kv: None } => {}
        }
    }
}

/// A put whose command exceeds the limit is bad usage, and says that nothing was sent.
fn too_large(e: ClientError) -> Failure {
    match e {
        ClientError::TooLarge { size, max } => Failure::usage(format!(
            "value too large: the command would be {size} bytes, the limit is {max}; nothing was sent"
        )),
        e => e.into(),
    }
}
