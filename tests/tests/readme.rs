//! The README's configuration table lists exactly the flags each binary's `--help` prints,
//! each with its environment variable and (where `--help` gives one value) its default: the
//! flags are defined once, in each service's `main.rs` from its `Config::default()`, and the
//! table cannot drift from them unnoticed.

#![forbid(unsafe_code)]

use std::process::Command;

/// One flag as `--help` prints it.
#[derive(Debug)]
struct Flag {
    name: String,
    env: Option<String>,
    /// The default when it is one value (`[default: 5000]`); a described one is skipped.
    default: Option<String>,
}

/// The flags of `service`'s `--help`, but `--help` and `--version`.
fn flags_of(service: &str) -> Vec<Flag> {
    let out = Command::new(echo_tests::binary(service))
        .arg("--help")
        .output()
        .expect("run --help");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut flags: Vec<Flag> = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("--") {
            let name = rest.split_whitespace().next().unwrap_or("").to_string();
            flags.push(Flag {
                name: format!("--{name}"),
                env: None,
                default: None,
            });
        } else if let Some(flag) = flags.last_mut() {
            flag.env = flag.env.take().or_else(|| bracket(trimmed, "[env: ", "="));
            flag.default = flag
                .default
                .take()
                .or_else(|| bracket(trimmed, "[default: ", "]").filter(|d| !d.contains(' ')));
        }
    }
    flags.retain(|f| f.name != "--help" && f.name != "--version");
    flags
}

/// What stands between `open` and `close` in `line`, if anything does.
fn bracket(line: &str, open: &str, close: &str) -> Option<String> {
    let start = line.find(open)? + open.len();
    let end = line[start..].find(close)? + start;
    Some(line[start..end].to_string())
}

/// The rows of the README's configuration table: (service, flag cell, env cell, default).
fn readme_rows() -> Vec<[String; 4]> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let table = readme
        .split("| service | flag | env | default |")
        .nth(1)
        .expect("the configuration table");
    table
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| {
            let cells: Vec<String> = l.split('|').map(|c| c.trim().to_string()).collect();
            Some([
                cells.get(1)?.clone(),
                cells.get(2)?.clone(),
                cells.get(3)?.clone(),
                cells.get(4)?.clone(),
            ])
        })
        .collect()
}

/// The flags a row names (`--x ARG` / `--y ARG`).
fn row_flags(cell: &str) -> Vec<String> {
    cell.split(|c: char| c == '`' || c.is_whitespace())
        .filter(|w| w.starts_with("--"))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_readme_lists_exactly_the_flags_and_defaults_of_help() {
    let rows = readme_rows();
    assert!(rows.len() > 10, "{rows:?}");
    for (service, letter) in [("service_a", "A"), ("service_b", "B")] {
        let flags = flags_of(service);
        assert!(flags.len() > 8, "{service}: {flags:?}");
        let ours: Vec<&[String; 4]> = rows
            .iter()
            .filter(|r| r[0] == letter || r[0] == "both")
            .collect();
        for flag in &flags {
            let row = ours
                .iter()
                .find(|r| row_flags(&r[1]).contains(&flag.name))
                .unwrap_or_else(|| panic!("{service} {}: no row in the README", flag.name));
            if let Some(env) = &flag.env {
                let envs: Vec<&str> = row[2]
                    .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                    .collect();
                assert!(
                    envs.contains(&env.as_str()),
                    "{service} {}: README says {:?}, --help {env}",
                    flag.name,
                    row[2]
                );
            }
            if let Some(default) = &flag.default {
                let cell = row[3].to_ascii_lowercase();
                assert!(
                    cell.contains(&default.to_ascii_lowercase()),
                    "{service} {}: README's default {:?}, --help {default}",
                    flag.name,
                    row[3]
                );
            }
        }
        for row in &ours {
            for name in row_flags(&row[1]) {
                assert!(
                    flags.iter().any(|f| f.name == name),
                    "README lists {name} for {}, --help of {service} does not",
                    row[0]
                );
            }
        }
    }
}
