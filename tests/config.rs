//! The configuration as operators meet it: `check-config` with every
//! source (file, environment, flags) and the source of each value, its
//! errors, the generated reference in README.md, and the example file.

#[macro_use]
mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Time one `ringcache check-config` or `config-reference` may take.
const RUN_WITHIN: Duration = Duration::from_secs(20);

/// Run the binary with `args` and exactly the `RINGCACHE_*` variables in
/// `env`; (success, stdout, stderr).
fn ringcache(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (var, _) in std::env::vars_os() {
        if var.to_str().is_some_and(is_config_env) || var == "RINGCACHE_CONFIG" {
            cmd.env_remove(var);
        }
    }
    cmd.envs(env.iter().copied());
    let mut child = cmd.spawn().expect("spawn ringcache");
    let deadline = Instant::now() + RUN_WITHIN;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() >= deadline {
            child.kill().ok();
            child.wait().ok();
            panic!(
                "ringcache {} did not finish within {RUN_WITHIN:?}",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut out = String::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.success(), out, err)
}

/// The line of `key` in check-config's output.
fn line_of<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(&format!("{key} ")))
        .unwrap_or_else(|| panic!("no line for {key}:\n{out}"))
}

#[test]
fn check_config_prints_each_key_with_its_source() {
    let (_dir, cfg) = config_file(
        "memory = \"64MiB\"\n[limits]\nhead_bytes_max = \"4KiB\"\nkeepalive_timeout = \"5s\"\n\
         [cache]\ndefault_ttl = \"30s\"\nkey_sort_query = true\n",
    );
    let cfg = cfg.to_str().unwrap();
    let (ok, out, err) = ringcache(
        &[
            "check-config",
            "--config",
            cfg,
            "--set",
            "cache.default_ttl=2m",
            "--workers",
            "3",
        ],
        &[
            ("RINGCACHE_LIMITS_KEEPALIVE_TIMEOUT", "7s"),
            ("RINGCACHE_CACHE_DEFAULT_TTL", "1m"),
            ("RINGCACHE_CACHE_KEY_INCLUDE_HOST", "false"),
        ],
    );
    assert!(ok, "check-config failed: {err}");
    let expect = [
        ("memory", "\"64MiB\"", format!("file {cfg}")),
        ("limits.head_bytes_max", "\"4KiB\"", format!("file {cfg}")),
        (
            "limits.keepalive_timeout",
            "\"7s\"",
            "env RINGCACHE_LIMITS_KEEPALIVE_TIMEOUT".into(),
        ),
        ("cache.default_ttl", "\"2m\"", "flag".into()),
        ("workers", "3", "flag".into()),
        ("cache.key_sort_query", "true", format!("file {cfg}")),
        (
            "cache.key_include_host",
            "false",
            "env RINGCACHE_CACHE_KEY_INCLUDE_HOST".into(),
        ),
        ("limits.body_bytes_max", "\"8MiB\"", "default".into()),
        ("admin.token", "(unset)", "default".into()),
    ];
    for (key, value, source) in expect {
        let line = line_of(&out, key);
        let (assignment, from) = line.split_once(" # ").expect(line);
        assert_eq!(assignment.trim_end(), format!("{key} = {value}"), "{line}");
        assert_eq!(from, source, "{line}");
    }
    // One line per key, each with its source.
    let (ok, reference, _) = ringcache(&["config-reference"], &[]);
    assert!(ok);
    let keys = reference.lines().filter(|l| l.starts_with("| `")).count();
    assert_eq!(out.lines().count(), keys, "{out}");
    assert!(out.lines().all(|l| l.contains(" # ")), "{out}");
}

#[test]
fn check_config_refuses_bad_values_naming_key_value_and_range() {
    let (_dir, cfg) = config_file("[limits]\nhead_bytes_max = \"128\"\n");
    let cfg = cfg.to_str().unwrap();
    for (args, env, want) in [
        (
            vec!["check-config", "--config", cfg],
            vec![],
            format!(
                "limits.head_bytes_max = \"128\": must be between 256 bytes and 1MiB (file {cfg})"
            ),
        ),
        (
            vec!["check-config"],
            vec![("RINGCACHE_LIMITS_ORIGIN_QUEUE_TIMEOUT", "5")],
            "limits.origin_queue_timeout = \"5\": must be a duration: a number and ms, s, m or h (env RINGCACHE_LIMITS_ORIGIN_QUEUE_TIMEOUT)"
                .to_string(),
        ),
        (
            vec!["check-config", "--set", "limits.bans_max=many"],
            vec![],
            "limits.bans_max = \"many\": must be a whole number (flag)".to_string(),
        ),
        (
            vec!["check-config", "--set", "cache.default_ttl=2y"],
            vec![],
            "cache.default_ttl = \"2y\": must be a duration".to_string(),
        ),
        (
            vec!["check-config", "--set", "limits.keepalive=5s"],
            vec![],
            "unknown key \"limits.keepalive\" (flag); did you mean \"limits.keepalive_timeout\"?"
                .to_string(),
        ),
    ] {
        let (ok, _, err) = ringcache(&args, &env);
        assert!(!ok, "{args:?} {env:?} was accepted");
        assert!(err.contains(&want), "{args:?} {env:?}: {err}");
    }
}

/// The text between the reference markers of README.md, markers included.
fn readme_reference(readme: &str) -> Option<&str> {
    let begin = readme.find("<!-- config-reference:")?;
    let end_marker = "<!-- end of config-reference -->";
    let end = readme.find(end_marker)? + end_marker.len();
    Some(&readme[begin..end])
}

#[test]
fn readme_holds_the_generated_reference() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let readme = std::fs::read_to_string(&path).expect("README.md");
    let (ok, generated, err) = ringcache(&["config-reference"], &[]);
    assert!(ok, "{err}");
    let held = readme_reference(&readme).expect("README.md has the reference markers");
    assert!(
        held == generated.trim_end(),
        "README.md's configuration reference differs from the table of keys in src/config.rs; \
         regenerate it with `cargo run -- config-reference --write README.md`"
    );
}

#[test]
fn config_reference_write_replaces_only_the_marked_part() {
    let (_, generated, _) = ringcache(&["config-reference"], &[]);
    let begin = generated.lines().next().unwrap();
    let dir = TempDir::new("reference");
    let file = dir.write(
        "doc.md",
        &format!("# before\n\n{begin}\nstale\n<!-- end of config-reference -->\n\nafter\n"),
    );
    let (ok, _, err) = ringcache(
        &["config-reference", "--write", file.to_str().unwrap()],
        &[],
    );
    assert!(ok, "{err}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text, format!("# before\n\n{generated}\nafter\n"));
}

#[test]
fn example_systemd_file_passes_check_config() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/ringcache.toml");
    let (ok, out, err) = ringcache(&["check-config", "--config", path.to_str().unwrap()], &[]);
    assert!(ok, "systemd/ringcache.toml: {err}");
    assert!(
        line_of(&out, "limits.head_bytes_max").ends_with(&format!("# file {}", path.display())),
        "{out}"
    );
}
