//! `iroh-raft kv`: put, get (linearizable) and delete keys of the built-in KV store of a
//! cluster, with `ctl`'s connection options, deadline and exit codes.
//!
//! A value comes from the command line, from stdin (`put KEY -`) or from a file
//! (`--value-file PATH`), exactly as given; it must be UTF-8 and its command must fit the
//! nodes' command size limit (`MAX_COMMAND_SIZE`, 4 MiB): a larger one is refused before
//! anything is sent.

use std::{io::Read, path::PathBuf};

use iroh_raft::{KvCommand, KvResponse, actors::wire::MAX_COMMAND_SIZE, mgmt::ClientError};
use serde_json::json;

use super::ctl::{Cli, Connect, Failure, print_one};

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
    /// Read KEY (linearizable).
    Get {
        /// The key.
        key: String,
    },
    /// Delete KEY.
    Delete {
        /// The key.
        key: String,
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

fn value_of(value: Option<String>, file: Option<PathBuf>) -> Result<String, Failure> {
    match (value, file) {
        (Some(v), _) if v == "-" => read_value("stdin", std::io::stdin().lock()),
        (Some(v), _) => Ok(v),
        (None, Some(path)) => {
            let file = std::fs::File::open(&path)
                .map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?;
            read_value(&path.display().to_string(), file)
        }
        (None, None) => Err(Failure::usage("no value given".into())),
    }
}

pub(crate) async fn run_kv(args: KvArgs) -> Result<(), Failure> {
    // The value is read before connecting: a bad one costs no round trip.
    let command = match args.command {
        KvCmd::Put {
            key,
            value,
            value_file,
        } => KvCmd::Put {
            value: Some(value_of(value, value_file)?),
            key,
            value_file: None,
        },
        other => other,
    };
    let cli = Cli::new(&args.connect).await?;
    let result = kv(&cli, command, args.connect.json).await;
    cli.close().await;
    result
}

async fn kv(cli: &Cli, command: KvCmd, json: bool) -> Result<(), Failure> {
    match command {
        KvCmd::Put { key, value, .. } => {
            let cmd = KvCommand::Set {
                key: key.clone(),
                value: value.unwrap_or_default(),
            };
            let r: KvResponse = cli.call().propose(&cmd).await.map_err(too_large)?;
            print_one(json, json!({ "key": key, "previous": r.previous }), || {
                "ok".into()
            });
        }
        KvCmd::Delete { key } => {
            let r: KvResponse = cli
                .call()
                .propose(&KvCommand::Delete { key: key.clone() })
                .await?;
            print_one(
                json,
                json!({ "key": key, "previous": r.previous }),
                || match r.previous {
                    Some(_) => "deleted".into(),
                    None => "not found".into(),
                },
            );
        }
        KvCmd::Get { key } => {
            let value: Option<String> = cli.call().read(&key).await?;
            if json {
                println!("{}", json!({ "key": key, "value": value }));
            } else {
                match value {
                    Some(v) => println!("{v}"),
                    None => {
                        return Err(Failure {
                            code: 1,
                            message: format!("{key}: not found"),
                        });
                    }
                }
            }
        }
    }
    Ok(())
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
