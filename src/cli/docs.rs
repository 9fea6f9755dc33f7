//! `completions` and `man`: shell completion scripts and man pages, generated from the clap
//! definitions of the binary (`main` hands over its `clap::Command`), so they say what `--help`
//! says.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use clap::Command;
use clap_complete::Shell;
use clap_mangen::Man;

/// Options of `iroh-raft completions`.
#[derive(clap::Args, Debug)]
pub(crate) struct CompletionsArgs {
    /// The shell to complete in.
    #[arg(value_enum)]
    shell: Shell,
}

/// Options of `iroh-raft man`.
#[derive(clap::Args, Debug)]
pub(crate) struct ManArgs {
    /// Write one page per command and subcommand into DIR (iroh-raft.1, iroh-raft-ctl.1,
    /// iroh-raft-ctl-watch.1, ...) and print their paths, instead of printing the top page.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// Writes the completion script of `cmd` for the shell asked for.
pub(crate) fn completions(
    mut cmd: Command,
    args: CompletionsArgs,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let name = cmd.get_name().to_string();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, name.clone(), &mut script);
    if args.shell == Shell::Bash {
        script = bash_arms_as_the_loop_spells_them(&String::from_utf8(script)?, &name).into();
    }
    Ok(emit(out, &script)?)
}

/// clap_complete's bash script misspells its `case` arms when the binary's name has a hyphen
/// (clap-rs/clap#6421, open as of clap_complete 4.6.12): its loop arrives at
/// `iroh__raft__subcmd__ctl`, the arm reads `iroh__subcmd__raft__subcmd__ctl`, and nothing
/// after a subcommand ever completes. Spells the arms as the loop does (a no-op once fixed).
fn bash_arms_as_the_loop_spells_them(script: &str, name: &str) -> String {
    let arm = name.replace('-', "__subcmd__");
    let state = name.replace('-', "__");
    script.replace(&format!("{arm}__subcmd__"), &format!("{state}__subcmd__"))
}

/// Writes the man page of `cmd` to `out`, or with `--out DIR` one page per (sub)command there.
pub(crate) fn man(cmd: Command, args: ManArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let Some(dir) = args.out else {
        let mut page = Vec::new();
        Man::new(cmd).render(&mut page)?;
        return Ok(emit(out, &page)?);
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // `build` names each subcommand after its parents (`iroh-raft-ctl-watch`): the file names.
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    for path in pages(cmd, &dir)? {
        writeln!(out, "{}", path.display())?;
    }
    Ok(())
}

/// Writes `bytes` to `out`: a reader that stops early (`| head`) is not an error.
fn emit(out: &mut dyn Write, bytes: &[u8]) -> std::io::Result<()> {
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        done => done,
    }
}

/// Writes the page of `cmd` and of each of its visible subcommands, depth first.
fn pages(cmd: Command, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        written.extend(pages(sub.clone(), dir)?);
    }
    let page = Man::new(cmd);
    let path = page
        .generate_to(dir)
        .with_context(|| format!("writing {}", dir.join(page.get_filename()).display()))?;
    written.push(path);
    Ok(written)
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser, error::ErrorKind};

    use super::*;
    use crate::{Cli, Command as Sub};

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("iroh-raft").chain(args.iter().copied()))
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn completions_are_a_script_naming_the_binary() {
        for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
            let Sub::Completions(args) = parse(&["completions", shell]).unwrap().command else {
                panic!("not the completions command");
            };
            let mut out = Vec::new();
            completions(Cli::command(), args, &mut out).unwrap();
            let script = String::from_utf8(out).unwrap();
            assert!(script.contains("iroh-raft"), "{shell}: {script}");
        }
    }

    #[test]
    fn bash_completes_after_a_subcommand() {
        let Sub::Completions(args) = parse(&["completions", "bash"]).unwrap().command else {
            panic!("not the completions command");
        };
        let mut out = Vec::new();
        completions(Cli::command(), args, &mut out).unwrap();
        let script = String::from_utf8(out).unwrap();
        // The state the loop builds for `iroh-raft ctl watch`, and its arm.
        assert!(script.contains(r#"cmd="iroh__raft__subcmd__ctl__subcmd__watch""#));
        assert!(script.contains("\n        iroh__raft__subcmd__ctl__subcmd__watch)\n"));
        assert!(!script.contains("iroh__subcmd__raft"));
    }

    #[test]
    fn an_unknown_shell_is_a_usage_error() {
        let e = parse(&["completions", "tcsh"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidValue);
        assert_eq!(e.exit_code(), 2);
        assert_eq!(parse(&["completions"]).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn man_prints_the_top_page_or_writes_one_per_command() {
        let Sub::Man(args) = parse(&["man"]).unwrap().command else {
            panic!("not the man command");
        };
        let mut out = Vec::new();
        man(Cli::command(), args, &mut out).unwrap();
        let page = String::from_utf8(out).unwrap();
        // After roff's apostrophe preamble (`.ie`/`.el`), the title.
        let first = page
            .lines()
            .find(|l| !l.starts_with(".ie") && !l.starts_with(".el"));
        assert!(
            first.is_some_and(|l| l.starts_with(".TH iroh-raft 1")),
            "{first:?}"
        );

        let dir = tempfile::tempdir().unwrap();
        let out_dir = dir.path().join("man1");
        let Sub::Man(args) = parse(&["man", "--out", out_dir.to_str().unwrap()])
            .unwrap()
            .command
        else {
            panic!("not the man command");
        };
        let mut out = Vec::new();
        man(Cli::command(), args, &mut out).unwrap();
        for name in ["iroh-raft.1", "iroh-raft-ctl.1", "iroh-raft-ctl-watch.1"] {
            let page = std::fs::read_to_string(out_dir.join(name)).unwrap();
            assert!(page.contains(".TH"), "{name}");
        }
        assert!(
            String::from_utf8(out)
                .unwrap()
                .contains("iroh-raft-ctl-watch.1")
        );
    }
}
