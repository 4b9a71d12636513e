//! Loader of the scripted broker sequences: JSON files of groups of tests, with the
//! group's settings inherited by each test and payloads decoded from the notation.
//!
//! A file is a list of groups. A group carries default settings (`ver`, `connect`,
//! `connack`, `clean_start`, `command`, `expect_disconnect`), steps run before every
//! test (`group_msgs`) and its `tests`. A setting on a test overrides the group's. This
//! module only reads and checks the data; playing it is the player's job.

use std::fmt;
use std::path::Path;

use serde_json::{Map, Value};

use crate::notation::parse_payload;

/// One step of a sequence, seen from the fake broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The broker writes these bytes to the client.
    Send(Vec<u8>),
    /// The client must write exactly these bytes next.
    Recv(Vec<u8>),
}

/// One test: the settings of the client and the broker's script, ready to play.
// The flags mirror the independent settings of the sequence files.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequence {
    /// File name the test comes from, such as `PUBACK.json`.
    pub file: String,
    /// Name of the test's group.
    pub group: String,
    /// Name of the test inside its group.
    pub name: String,
    /// Protocol level the client connects with: 3, 4 or 5.
    pub version: u8,
    /// Whether the broker first reads and checks the client's default CONNECT.
    pub connect: bool,
    /// Whether the broker then sends its default CONNACK.
    pub connack: bool,
    /// Clean session (3.1.1) or clean start (5.0) flag the client connects with.
    pub clean_start: bool,
    /// What the client does once connected, such as `publish-1`.
    pub command: Option<String>,
    /// Whether the client must have closed the connection after the steps.
    pub expect_disconnect: bool,
    /// The group's steps followed by the test's own.
    pub steps: Vec<Step>,
}

impl Sequence {
    /// Returns `file / group / name`, the name used in reports and by the filter.
    pub fn full_name(&self) -> String {
        let group = self.group.split_whitespace().collect::<Vec<_>>().join(" ");
        format!("{} / {} / {}", self.file, group, self.name)
    }
}

/// Error in a sequence file, with the place it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    /// File, group and test where the error is, as far as known.
    pub place: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.place, self.reason)
    }
}

impl std::error::Error for LoadError {}

/// Settings that a test inherits from its group unless it sets them itself.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Clone)]
struct Settings {
    version: u8,
    connect: bool,
    connack: bool,
    clean_start: bool,
    command: Option<String>,
    expect_disconnect: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            version: 4,
            connect: true,
            connack: true,
            clean_start: true,
            command: None,
            expect_disconnect: true,
        }
    }
}

const SETTING_KEYS: [&str; 6] = [
    "ver",
    "connect",
    "connack",
    "clean_start",
    "command",
    "expect_disconnect",
];
const GROUP_KEYS: [&str; 4] = ["group", "comment", "group_msgs", "tests"];
const TEST_KEYS: [&str; 3] = ["name", "comment", "msgs"];
const STEP_KEYS: [&str; 3] = ["type", "payload", "comment"];

/// Loads every `*.json` file of `dir`, in file name order, into sequences.
pub fn load_dir(dir: &Path) -> Result<Vec<Sequence>, LoadError> {
    let place = dir.display().to_string();
    let entries = std::fs::read_dir(dir).map_err(|error| LoadError {
        place: place.clone(),
        reason: format!("cannot list the directory: {error}"),
    })?;

    let mut paths = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|error| LoadError {
                place: place.clone(),
                reason: format!("cannot list the directory: {error}"),
            })?
            .path();
        if path.extension().is_some_and(|ext| ext == "json") {
            paths.push(path);
        }
    }
    paths.sort();

    let mut sequences = Vec::new();
    for path in paths {
        sequences.extend(load_file(&path)?);
    }
    Ok(sequences)
}

/// Loads one sequence file.
pub fn load_file(path: &Path) -> Result<Vec<Sequence>, LoadError> {
    let file = path.file_name().map_or_else(
        || path.display().to_string(),
        |name| name.to_string_lossy().into_owned(),
    );
    let text = std::fs::read_to_string(path).map_err(|error| LoadError {
        place: file.clone(),
        reason: format!("cannot read the file: {error}"),
    })?;
    parse_file(&file, &text)
}

/// Parses the text of one sequence file named `file`.
pub fn parse_file(file: &str, text: &str) -> Result<Vec<Sequence>, LoadError> {
    let root: Value = serde_json::from_str(text).map_err(|error| LoadError {
        place: file.to_owned(),
        reason: format!("invalid JSON: {error}"),
    })?;
    let groups = root.as_array().ok_or_else(|| LoadError {
        place: file.to_owned(),
        reason: "the top level must be a list of groups".to_owned(),
    })?;

    let mut sequences = Vec::new();
    for (index, group) in groups.iter().enumerate() {
        let place = format!("{file} group {index}");
        sequences.extend(parse_group(file, group).map_err(|reason| LoadError { place, reason })?);
    }
    Ok(sequences)
}

fn parse_group(file: &str, group: &Value) -> Result<Vec<Sequence>, String> {
    let object = group.as_object().ok_or("a group must be an object")?;
    check_keys(object, &[&SETTING_KEYS[..], &GROUP_KEYS[..]].concat())?;

    let name = required_str(object, "group")?;
    let settings = apply_settings(object, Settings::default())
        .map_err(|reason| format!("group `{name}`: {reason}"))?;
    let group_steps = match object.get("group_msgs") {
        Some(steps) => parse_steps(steps).map_err(|reason| format!("group `{name}`: {reason}"))?,
        None => Vec::new(),
    };
    let tests = object
        .get("tests")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("group `{name}`: missing list `tests`"))?;

    let mut sequences = Vec::new();
    for test in tests {
        let sequence = parse_test(file, name, &settings, &group_steps, test)
            .map_err(|reason| format!("group `{name}`: {reason}"))?;
        sequences.push(sequence);
    }
    Ok(sequences)
}

fn parse_test(
    file: &str,
    group: &str,
    inherited: &Settings,
    group_steps: &[Step],
    test: &Value,
) -> Result<Sequence, String> {
    let object = test.as_object().ok_or("a test must be an object")?;
    let name = required_str(object, "name")?;
    let in_test = |reason: String| format!("test `{name}`: {reason}");
    check_keys(object, &[&SETTING_KEYS[..], &TEST_KEYS[..]].concat()).map_err(in_test)?;

    let settings = apply_settings(object, inherited.clone()).map_err(in_test)?;
    let own_steps = object
        .get("msgs")
        .ok_or("missing list `msgs`")
        .map_err(|r| in_test(r.to_owned()))?;
    let mut steps = group_steps.to_vec();
    steps.extend(parse_steps(own_steps).map_err(in_test)?);

    Ok(Sequence {
        file: file.to_owned(),
        group: group.to_owned(),
        name: name.to_owned(),
        version: settings.version,
        connect: settings.connect,
        connack: settings.connack,
        clean_start: settings.clean_start,
        command: settings.command,
        expect_disconnect: settings.expect_disconnect,
        steps,
    })
}

/// Returns `settings` with every setting that `object` sets replaced.
fn apply_settings(object: &Map<String, Value>, mut settings: Settings) -> Result<Settings, String> {
    if let Some(value) = object.get("ver") {
        settings.version = match value.as_u64() {
            Some(3) => 3,
            Some(4) => 4,
            Some(5) => 5,
            _ => return Err(format!("`ver` must be 3, 4 or 5, found {value}")),
        };
    }
    if let Some(value) = optional_bool(object, "connect")? {
        settings.connect = value;
    }
    if let Some(value) = optional_bool(object, "connack")? {
        settings.connack = value;
    }
    if let Some(value) = optional_bool(object, "clean_start")? {
        settings.clean_start = value;
    }
    if let Some(value) = optional_bool(object, "expect_disconnect")? {
        settings.expect_disconnect = value;
    }
    if let Some(value) = object.get("command") {
        let command = value.as_str().ok_or("`command` must be a string")?;
        settings.command = Some(command.to_owned());
    }
    Ok(settings)
}

fn parse_steps(steps: &Value) -> Result<Vec<Step>, String> {
    let list = steps.as_array().ok_or("steps must be a list")?;
    let mut parsed = Vec::with_capacity(list.len());

    for (index, step) in list.iter().enumerate() {
        let in_step = |reason: String| format!("step {index}: {reason}");
        let object = step
            .as_object()
            .ok_or_else(|| in_step("a step must be an object".to_owned()))?;
        check_keys(object, &STEP_KEYS).map_err(in_step)?;

        let payload = required_str(object, "payload").map_err(in_step)?;
        let bytes = parse_payload(payload).map_err(|error| in_step(error.to_string()))?;
        let step = match required_str(object, "type").map_err(in_step)? {
            "send" => Step::Send(bytes),
            "recv" => Step::Recv(bytes),
            other => return Err(in_step(format!("unknown step type `{other}`"))),
        };
        parsed.push(step);
    }
    Ok(parsed)
}

/// Rejects keys outside `known`, so a new setting in the data is not silently ignored.
fn check_keys(object: &Map<String, Value>, known: &[&str]) -> Result<(), String> {
    match object.keys().find(|key| !known.contains(&key.as_str())) {
        Some(key) => Err(format!("unknown key `{key}`")),
        None => Ok(()),
    }
}

fn required_str<'a>(object: &'a Map<String, Value>, key: &str) -> Result<&'a str, String> {
    object
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing string `{key}`"))
}

fn optional_bool(object: &Map<String, Value>, key: &str) -> Result<Option<bool>, String> {
    match object.get(key) {
        None => Ok(None),
        Some(Value::Bool(value)) => Ok(Some(*value)),
        Some(other) => Err(format!("`{key}` must be true or false, found {other}")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    const FILE: &str = r#"[
        {
            "group": "v5.0   SAMPLE",
            "ver": 5,
            "connack": false,
            "command": "publish-1",
            "group_msgs": [{"type": "recv", "payload": "30 r0"}],
            "tests": [
                { "name": "inherits", "msgs": [{"type": "send", "payload": "20 r3 00 00 v0"}]},
                { "name": "overrides", "ver": 4, "connack": true, "connect": false,
                  "clean_start": false, "expect_disconnect": false, "command": "subscribe-0",
                  "msgs": [{"type": "send", "payload": "D0 r0", "comment": "ignored"}]}
            ]
        },
        {
            "group": "defaults",
            "comment": "ignored",
            "tests": [{ "name": "plain", "msgs": [] }]
        }
    ]"#;

    #[test]
    fn group_settings_inherited() {
        let sequences = parse_file("SAMPLE.json", FILE).unwrap();
        let first = &sequences[0];
        assert_eq!(first.version, 5);
        assert!(first.connect);
        assert!(!first.connack);
        assert!(first.clean_start);
        assert_eq!(first.command.as_deref(), Some("publish-1"));
        assert!(first.expect_disconnect);
        assert_eq!(
            first.steps,
            [
                Step::Recv(vec![0x30, 0]),
                Step::Send(vec![0x20, 3, 0, 0, 0])
            ]
        );
        assert_eq!(first.full_name(), "SAMPLE.json / v5.0 SAMPLE / inherits");
    }

    #[test]
    fn test_settings_override_group() {
        let sequences = parse_file("SAMPLE.json", FILE).unwrap();
        let second = &sequences[1];
        assert_eq!(second.version, 4);
        assert!(!second.connect);
        assert!(second.connack);
        assert!(!second.clean_start);
        assert!(!second.expect_disconnect);
        assert_eq!(second.command.as_deref(), Some("subscribe-0"));
        assert_eq!(second.steps.len(), 2, "group steps come first");
    }

    #[test]
    fn defaults_without_settings() {
        let sequences = parse_file("SAMPLE.json", FILE).unwrap();
        let plain = &sequences[2];
        assert_eq!(plain.version, 4);
        assert!(plain.connect);
        assert!(plain.connack);
        assert!(plain.clean_start);
        assert_eq!(plain.command, None);
        assert!(plain.expect_disconnect);
        assert!(plain.steps.is_empty());
    }

    #[test]
    fn invalid_files_rejected_with_place() {
        let cases = [
            ("{}", "the top level must be a list of groups"),
            (
                r#"[{"group": "g", "tests": [], "extra": 1}]"#,
                "unknown key `extra`",
            ),
            (
                r#"[{"group": "g", "ver": 6, "tests": []}]"#,
                "`ver` must be 3, 4 or 5",
            ),
            (
                r#"[{"group": "g", "tests": [{"name": "t"}]}]"#,
                "missing list `msgs`",
            ),
            (
                r#"[{"group": "g", "tests": [{"name": "t", "msgs": [{"type": "peek", "payload": ""}]}]}]"#,
                "unknown step type `peek`",
            ),
            (
                r#"[{"group": "g", "tests": [{"name": "t", "msgs": [{"type": "send", "payload": "2"}]}]}]"#,
                "invalid token `2`",
            ),
        ];
        for (text, expected) in cases {
            let error = parse_file("BAD.json", text).unwrap_err();
            assert!(
                error.to_string().contains(expected),
                "`{error}` should mention `{expected}`"
            );
        }
    }
}
