//! Runs the Mosquitto client-library conformance sequences against mqttlink.
//!
//! The sequences live outside the repository, in `../shared/conformance/mosquitto`
//! beside the checkout. A scripted fake broker plays each one on a loopback port
//! against a real mqttlink client; `docs/conformance.md` describes the run and lists
//! the deliberate differences. Set `MQTTLINK_CONFORMANCE` to fail when the sequences
//! are absent, and `MQTTLINK_CONFORMANCE_FILTER` to run only the sequences whose
//! `file / group / name` contains that text.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "support/conformance/commands.rs"]
mod commands;
#[path = "support/conformance/notation.rs"]
mod notation;
#[path = "support/conformance/player.rs"]
mod player;
#[path = "support/conformance/sequences.rs"]
mod sequences;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin, Command as Process};

use commands::{Command, DriverLine};
use player::Player;
use sequences::Sequence;

/// Why a PUBLISH with a property that PUBLISH may not carry gets DISCONNECT 0x81 where
/// the sequences expect 0x82.
const PROPERTY_NOT_FOR_PUBLISH: &str = "MQTT 5.0 section 2.2.2.2: a packet that contains an \
     Identifier which is not valid for its packet type is a Malformed Packet, answered with \
     Reason Code 0x81 (Malformed Packet)";

/// Sequences where mqttlink behaves differently on purpose, each with the words of the
/// specification that allow it. Kept in step with `docs/conformance.md`.
const DELIBERATE_DIFFERENCES: &[(&str, &str)] = &[
    (
        "PUBLISH.json / v5.0 PUBLISH / 36 QoS 3 (with mid) [MQTT-3.3.1-4]",
        "MQTT 5.0 section 3.3.1.2: a PUBLISH with both QoS bits set to 1 is a Malformed \
         Packet, answered with DISCONNECT Reason Code 0x81 (Malformed Packet)",
    ),
    (
        "PUBLISH.json / v5.0 PUBLISH ALLOWED PROPERTIES / 2*subscription-identifier=1 \
         (variable byte integer)",
        "MQTT 5.0 section 3.3.2.3.8: multiple Subscription Identifiers will be included if the \
         publication is the result of a match to more than one subscription, so a PUBLISH \
         from the Server may carry more than one and the client acknowledges it",
    ),
    (
        "PUBLISH.json / v5.0 PUBLISH DISALLOWED PROPERTIES / assigned-client-identifier (UTF-8 string)",
        PROPERTY_NOT_FOR_PUBLISH,
    ),
    (
        "PUBLISH.json / v5.0 PUBLISH DISALLOWED PROPERTIES / authentication-data (binary data)",
        PROPERTY_NOT_FOR_PUBLISH,
    ),
    (
        "PUBLISH.json / v5.0 PUBLISH DISALLOWED PROPERTIES / authentication-method (UTF-8 string)",
        PROPERTY_NOT_FOR_PUBLISH,
    ),
    (
        "PUBLISH.json / v5.0 PUBLISH DISALLOWED PROPERTIES / maximum-packet-size (four byte integer)",
        PROPERTY_NOT_FOR_PUBLISH,
    ),
    (
        "PUBLISH.json / v5.0 PUBLISH DISALLOWED PROPERTIES / maximum-qos (byte)",
        PROPERTY_NOT_FOR_PUBLISH,
    ),
    (
        "PUBLISH.json / v5.0 PUBLISH DISALLOWED PROPERTIES / reason-string property",
        PROPERTY_NOT_FOR_PUBLISH,
    ),
    (
        "PUBLISH.json / v5.0 PUBLISH DISALLOWED PROPERTIES / receive-maximum (two byte integer)",
        PROPERTY_NOT_FOR_PUBLISH,
    ),
    (
        "PUBLISH.json / v5.0 PUBLISH DISALLOWED PROPERTIES / request-problem-information (byte)",
        PROPERTY_NOT_FOR_PUBLISH,
    ),
    (
        "PUBLISH.json / v5.0 PUBLISH DISALLOWED PROPERTIES / response-information (UTF-8 string)",
        PROPERTY_NOT_FOR_PUBLISH,
    ),
    (
        "PUBLISH.json / v5.0 PUBLISH DISALLOWED PROPERTIES / retain-available (byte)",
        PROPERTY_NOT_FOR_PUBLISH,
    ),
    (
        "PUBLISH.json / v5.0 PUBLISH DISALLOWED PROPERTIES / server-keep-alive (two byte integer)",
        PROPERTY_NOT_FOR_PUBLISH,
    ),
    (
        "PUBLISH.json / v5.0 PUBLISH DISALLOWED PROPERTIES / server-reference (UTF-8 string)",
        PROPERTY_NOT_FOR_PUBLISH,
    ),
    (
        "PUBLISH.json / v5.0 PUBLISH DISALLOWED PROPERTIES / session-expiry-interval (four byte integer)",
        PROPERTY_NOT_FOR_PUBLISH,
    ),
    (
        "PUBLISH.json / v5.0 PUBLISH DISALLOWED PROPERTIES / shared-subscription-available (byte)",
        PROPERTY_NOT_FOR_PUBLISH,
    ),
    (
        "PUBLISH.json / v5.0 PUBLISH DISALLOWED PROPERTIES / subscription-identifier-available (byte)",
        PROPERTY_NOT_FOR_PUBLISH,
    ),
    (
        "PUBLISH.json / v5.0 PUBLISH DISALLOWED PROPERTIES / topic-alias-maximum (two byte integer)",
        PROPERTY_NOT_FOR_PUBLISH,
    ),
    (
        "PUBLISH.json / v5.0 PUBLISH DISALLOWED PROPERTIES / wildcard-subscription-available (byte)",
        PROPERTY_NOT_FOR_PUBLISH,
    ),
    (
        "PUBLISH.json / v5.0 PUBLISH DISALLOWED PROPERTIES / will-delay-interval (four byte integer)",
        PROPERTY_NOT_FOR_PUBLISH,
    ),
];

/// Number of sequences played at the same time by the in-process run.
const BATCH_SIZE: usize = 8;

/// The driver run plays every this many-th sequence.
const DRIVER_SUBSET_STEP: usize = 40;

/// Maximum wait for the client's own report after a failed sequence.
const CLIENT_REPORT_WAIT: Duration = Duration::from_secs(2);

/// Maximum wait for the driver process to exit after its stdin is closed.
const DRIVER_EXIT_WAIT: Duration = Duration::from_secs(5);

#[test]
fn sequence_files_load() {
    let dir = sequence_dir();
    if !dir.is_dir() {
        println!("conformance sequences absent: {}", dir.display());
        return;
    }
    let sequences = sequences::load_dir(&dir).unwrap();
    assert_eq!(sequences.len(), 635);
}

#[test]
fn absent_sequences_fail_only_when_required() {
    let absent = sequence_dir().join("absent-directory");
    assert_eq!(load_selected(&absent, false, None), Ok(None));

    let error = load_selected(&absent, true, None).unwrap_err();
    assert!(error.starts_with("MQTTLINK_CONFORMANCE is set"), "{error}");
}

#[test]
fn filter_selects_by_full_name() {
    let dir = sequence_dir();
    if !dir.is_dir() {
        println!("conformance sequences absent: {}", dir.display());
        return;
    }
    let selected = load_selected(&dir, true, Some("PINGRESP.json / v5.0"))
        .unwrap()
        .unwrap();
    assert_eq!(selected.len(), 8);
    assert!(selected
        .iter()
        .all(|sequence| sequence.file == "PINGRESP.json"));
}

/// The default CONNACK grants no Topic Alias Maximum, so the client's PUBLISH must come
/// without the Topic Alias that the sequences show [MQTT-3.2.2-18] [MQTT-3.3.2-9]. The
/// other sequences accept both forms.
#[test]
fn v5_publish_carries_no_topic_alias() {
    let Some(sequences) = selected_sequences() else {
        return;
    };
    let mut strict: Vec<Sequence> = sequences
        .into_iter()
        .filter(|sequence| sequence.full_name() == "PUBACK.json / v5.0 PUBACK / 40 len=2")
        .collect();
    if strict.is_empty() {
        println!("MQTTLINK_CONFORMANCE_FILTER leaves out the topic alias sequence");
        return;
    }
    let original = strict[0].steps.clone();
    for step in &mut strict[0].steps {
        if let sequences::Step::Recv(bytes) = step {
            if let Some(without_alias) = player::publish_without_topic_alias(bytes) {
                *bytes = without_alias;
            }
        }
    }
    assert_ne!(
        strict[0].steps, original,
        "no step of the sequence has a Topic Alias"
    );

    let system = actix_rt::System::new();
    let outcomes = system.block_on(run_in_batches(&strict));
    check_outcomes(&strict, &outcomes);
}

/// Sequences written for mqttlink in the Mosquitto format, for what the Mosquitto
/// sequences do not reach. They check the order of acknowledgements [MQTT-4.6.0-2]
/// [MQTT-4.6.0-3] and PUBREC for a repeated QoS 2 PUBLISH before PUBREL
/// [MQTT-4.3.3-10]. They also check the packets of every command but `publish-1`,
/// with bytes that this harness chose.
const MQTTLINK_SEQUENCES: &str = r#"[
    {
        "group": "v3.1.1 acknowledgement order",
        "ver": 4,
        "expect_disconnect": false,
        "tests": [
            { "name": "PUBACK in PUBLISH order", "msgs": [
                {"type": "send", "payload": "32 r6 s1 't' m7 'a' 32 r6 s1 't' m3 'b'"},
                {"type": "recv", "payload": "40 r2 m7"},
                {"type": "recv", "payload": "40 r2 m3"}
            ]},
            { "name": "PUBREC in PUBLISH order, repeat before PUBREL", "msgs": [
                {"type": "send", "payload": "34 r6 s1 't' m7 'a' 34 r6 s1 't' m3 'b'"},
                {"type": "recv", "payload": "50 r2 m7"},
                {"type": "recv", "payload": "50 r2 m3"},
                {"type": "send", "payload": "3C r6 s1 't' m7 'a'"},
                {"type": "recv", "payload": "50 r2 m7"},
                {"type": "send", "payload": "62 r2 m3"},
                {"type": "recv", "payload": "70 r2 m3"},
                {"type": "send", "payload": "62 r2 m7"},
                {"type": "recv", "payload": "70 r2 m7"}
            ]}
        ]
    },
    {
        "group": "v5.0 acknowledgement order",
        "ver": 5,
        "expect_disconnect": false,
        "tests": [
            { "name": "PUBACK in PUBLISH order", "msgs": [
                {"type": "send", "payload": "32 r7 s1 't' m7 v0 'a' 32 r7 s1 't' m3 v0 'b'"},
                {"type": "recv", "payload": "40 r2 m7"},
                {"type": "recv", "payload": "40 r2 m3"}
            ]},
            { "name": "PUBREC in PUBLISH order, repeat before PUBREL", "msgs": [
                {"type": "send", "payload": "34 r7 s1 't' m7 v0 'a' 34 r7 s1 't' m3 v0 'b'"},
                {"type": "recv", "payload": "50 r2 m7"},
                {"type": "recv", "payload": "50 r2 m3"},
                {"type": "send", "payload": "3C r7 s1 't' m7 v0 'a'"},
                {"type": "recv", "payload": "50 r2 m7"},
                {"type": "send", "payload": "62 r2 m3"},
                {"type": "recv", "payload": "70 r2 m3"},
                {"type": "send", "payload": "62 r2 m7"},
                {"type": "recv", "payload": "70 r2 m7"}
            ]}
        ]
    },
    {
        "group": "v3.1.1 commands",
        "ver": 4,
        "expect_disconnect": false,
        "tests": [
            { "name": "publish-0", "command": "publish-0", "msgs": [
                {"type": "recv", "payload": "30 r21 s12 'test/publish' 'message'"}
            ]},
            { "name": "publish-2", "command": "publish-2", "msgs": [
                {"type": "recv", "payload": "34 r23 s12 'test/publish' m1 'message'"},
                {"type": "send", "payload": "50 r2 m1"},
                {"type": "recv", "payload": "62 r2 m1"},
                {"type": "send", "payload": "70 r2 m1"}
            ]},
            { "name": "subscribe-0", "command": "subscribe-0", "msgs": [
                {"type": "recv", "payload": "82 r19 m1 s14 'test/subscribe' 00"},
                {"type": "send", "payload": "90 r3 m1 00"}
            ]},
            { "name": "subscribe-1", "command": "subscribe-1", "msgs": [
                {"type": "recv", "payload": "82 r19 m1 s14 'test/subscribe' 01"},
                {"type": "send", "payload": "90 r3 m1 01"}
            ]},
            { "name": "subscribe-2", "command": "subscribe-2", "msgs": [
                {"type": "recv", "payload": "82 r19 m1 s14 'test/subscribe' 02"},
                {"type": "send", "payload": "90 r3 m1 02"}
            ]},
            { "name": "subscribe-multiple", "command": "subscribe-multiple", "msgs": [
                {"type": "recv", "payload": "82 r38 m1 s15 'test/subscribe1' 00 s15 'test/subscribe2' 00"},
                {"type": "send", "payload": "90 r4 m1 00 00"}
            ]},
            { "name": "unsubscribe", "command": "unsubscribe", "msgs": [
                {"type": "recv", "payload": "A2 r18 m1 s14 'test/subscribe'"},
                {"type": "send", "payload": "B0 r2 m1"}
            ]},
            { "name": "unsubscribe-multiple", "command": "unsubscribe-multiple", "msgs": [
                {"type": "recv", "payload": "A2 r36 m1 s15 'test/subscribe1' s15 'test/subscribe2'"},
                {"type": "send", "payload": "B0 r2 m1"}
            ]}
        ]
    },
    {
        "group": "v5.0 commands",
        "ver": 5,
        "expect_disconnect": false,
        "tests": [
            { "name": "publish-0", "command": "publish-0", "msgs": [
                {"type": "recv", "payload": "30 r111 s12 'test/publish' v89 01 i1 02 ffffffff 08 s14 'response/topic' 09 H36 '7deac5c5-8802-44ff-86ce-11479f337419' 03 s10 'text/plain' 26 s3 'key' s5 'value' 'message'"}
            ]},
            { "name": "publish-2", "command": "publish-2", "msgs": [
                {"type": "recv", "payload": "34 r113 s12 'test/publish' m1 v89 01 i1 02 ffffffff 08 s14 'response/topic' 09 H36 '7deac5c5-8802-44ff-86ce-11479f337419' 03 s10 'text/plain' 26 s3 'key' s5 'value' 'message'"},
                {"type": "send", "payload": "50 r2 m1"},
                {"type": "recv", "payload": "62 r2 m1"},
                {"type": "send", "payload": "70 r2 m1"}
            ]},
            { "name": "subscribe-1", "command": "subscribe-1", "msgs": [
                {"type": "recv", "payload": "82 r38 m1 v18 0B v268435455 26 s3 'key' s5 'value' s14 'test/subscribe' 01"},
                {"type": "send", "payload": "90 r4 m1 v0 01"}
            ]},
            { "name": "subscribe-multiple", "command": "subscribe-multiple", "msgs": [
                {"type": "recv", "payload": "82 r57 m1 v18 0B v268435455 26 s3 'key' s5 'value' s15 'test/subscribe1' 00 s15 'test/subscribe2' 00"},
                {"type": "send", "payload": "90 r5 m1 v0 00 00"}
            ]},
            { "name": "unsubscribe", "command": "unsubscribe", "msgs": [
                {"type": "recv", "payload": "A2 r32 m1 v13 26 s3 'key' s5 'value' s14 'test/subscribe'"},
                {"type": "send", "payload": "B0 r4 m1 v0 00"}
            ]},
            { "name": "unsubscribe-multiple", "command": "unsubscribe-multiple", "msgs": [
                {"type": "recv", "payload": "A2 r50 m1 v13 26 s3 'key' s5 'value' s15 'test/subscribe1' s15 'test/subscribe2'"},
                {"type": "send", "payload": "B0 r5 m1 v0 00 00"}
            ]}
        ]
    }
]"#;

#[test]
fn mqttlink_sequences_pass() {
    let sequences = sequences::parse_file("mqttlink", MQTTLINK_SEQUENCES).unwrap();
    assert_eq!(sequences.len(), 18);

    let system = actix_rt::System::new();
    let outcomes = system.block_on(run_in_batches(&sequences));
    check_outcomes(&sequences, &outcomes);
}

/// Rules for what the client sends that its types enforce before any packet exists:
/// topic names and filters, and QoS values.
#[test]
fn topic_and_qos_rules_held_by_types() {
    use mqttlink::codec::{QoS, TopicFilter, TopicName};

    let long = "a".repeat(65_536);
    let invalid_names = [
        ("a/+", "[MQTT-4.7.0-1] wildcard in a topic name"),
        ("a/#", "[MQTT-4.7.0-1] wildcard in a topic name"),
        ("", "[MQTT-4.7.3-1] empty topic name"),
        ("a\0b", "[MQTT-4.7.3-2] U+0000 in a topic name"),
        (long.as_str(), "[MQTT-4.7.3-3] topic name over 65,535 bytes"),
    ];
    for (name, rule) in invalid_names {
        assert!(TopicName::try_from(name).is_err(), "{rule}");
    }
    assert!(TopicName::try_from("a/b").is_ok());

    let invalid_filters = [
        ("a#", "[MQTT-4.7.1-1] # not alone in its level"),
        ("a/#/b", "[MQTT-4.7.1-1] # not last"),
        ("a+", "[MQTT-4.7.1-2] + not alone in its level"),
        ("+a/b", "[MQTT-4.7.1-2] + not alone in its level"),
        ("", "[MQTT-4.7.3-1] empty topic filter"),
        ("$share//a", "[MQTT-4.8.2-1] empty share name"),
        ("$share/g", "[MQTT-4.8.2-2] no filter after the share name"),
        ("$share/g+/a", "[MQTT-4.8.2-2] + in the share name"),
    ];
    for (filter, rule) in invalid_filters {
        assert!(TopicFilter::try_from(filter).is_err(), "{rule}");
    }
    for filter in ["#", "+", "a/+/b", "a/#", "+/+", "$share/g/a/#"] {
        assert!(
            TopicFilter::try_from(filter).is_ok(),
            "valid filter {filter}"
        );
    }

    assert!(QoS::try_from(3).is_err(), "[MQTT-3.1.2-14] QoS 3");
}

/// A 3.1.1 client with an empty client identifier must ask for a clean session
/// [MQTT-3.1.3-7]. Under 5.0 the broker assigns an identifier instead.
#[test]
fn empty_client_id_needs_clean_session_before_5() {
    use mqttlink::codec::ProtocolVersion;
    use mqttlink::{ClientError, ClientOptions};

    // The accepted client connects, so it gets a listener of this test to connect to.
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = listener.local_addr().unwrap().port();

    let system = actix_rt::System::new();
    system.block_on(async {
        let options = |version| {
            ClientOptions::new("127.0.0.1", port)
                .client_id("")
                .protocol(version)
                .clean_start(false)
                .reconnect(false)
        };

        let refused = options(ProtocolVersion::V3_1_1).start();
        assert!(
            matches!(refused, Err(ClientError::InvalidOptions(_))),
            "{refused:?}"
        );
        let accepted = options(ProtocolVersion::V5).start();
        assert!(accepted.is_ok(), "{accepted:?}");
    });
}

/// A CONNECT with a will and credentials carries each field its flags announce, in the
/// order Client Identifier, Will Properties (5.0), Will Topic, Will Payload, User Name,
/// Password [MQTT-3.1.2-9] [MQTT-3.1.3-1]. The flags byte 0xEE announces user name,
/// password, will retain, will QoS 1, will and clean start.
#[test]
fn connect_carries_will_and_credentials() {
    let expected = [
        (
            4,
            "10 r49 s4 'MQTT' 04 EE k60 s7 'fuzzish' s10 'will/topic' s4 'gone' s4 'user' s4 'pass'",
        ),
        (
            5,
            "10 r54 s4 'MQTT' 05 EE k60 v3 21 H20 s7 'fuzzish' v0 s10 'will/topic' s4 'gone' \
             s4 'user' s4 'pass'",
        ),
    ];

    let system = actix_rt::System::new();
    for (version, bytes) in expected {
        let expected = notation::parse_payload(bytes).unwrap();
        let received = system.block_on(connect_packet_with_will(version)).unwrap();
        assert_eq!(
            notation::to_hex(&received),
            notation::to_hex(&expected),
            "CONNECT of protocol level {version}"
        );
    }
}

/// Starts a client with a will and credentials and returns the first packet it sends.
async fn connect_packet_with_will(version: u8) -> Result<Vec<u8>, String> {
    use mqttlink::codec::{LastWill, Properties, QoS, TopicName};

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|error| error.to_string())?;
    let port = listener
        .local_addr()
        .map_err(|error| error.to_string())?
        .port();
    let will = LastWill {
        topic: TopicName::try_from("will/topic").map_err(|error| error.to_string())?,
        payload: "gone".into(),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: Properties::default(),
    };
    let client = commands::client_options(port, commands::protocol_version(version)?, true)
        .credentials("user", Some(b"pass".to_vec()))
        .last_will(will)
        .start()
        .map_err(|error| error.to_string())?;

    let (mut stream, _) = tokio::time::timeout(player::STEP_TIMEOUT, listener.accept())
        .await
        .map_err(|_| "the client did not connect".to_owned())?
        .map_err(|error| error.to_string())?;
    let connect = player::read_one_packet(&mut stream).await;
    drop(client);
    connect
}

#[test]
fn mosquitto_sequences_pass_in_process() {
    let Some(sequences) = selected_sequences() else {
        return;
    };

    let system = actix_rt::System::new();
    let outcomes = system.block_on(run_in_batches(&sequences));
    check_outcomes(&sequences, &outcomes);
}

#[test]
fn mosquitto_sequences_pass_through_driver() {
    let Some(sequences) = selected_sequences() else {
        return;
    };
    let Some(binary) = driver_binary() else {
        return;
    };
    let mut subset: Vec<Sequence> = sequences
        .into_iter()
        .filter(|sequence| deliberate_difference(sequence).is_none())
        .step_by(DRIVER_SUBSET_STEP)
        .collect();
    // The Mosquitto sequences use only `publish-1`; these give the driver every command.
    let with_commands = sequences::parse_file("mqttlink", MQTTLINK_SEQUENCES).unwrap();
    subset.extend(
        with_commands
            .into_iter()
            .filter(|sequence| sequence.command.is_some()),
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (outcomes, exit) = runtime.block_on(async {
        let mut driver = Driver::spawn(&binary);
        let mut outcomes = Vec::with_capacity(subset.len());
        for sequence in &subset {
            outcomes.push(run_through_driver(&mut driver, sequence).await);
        }
        (outcomes, driver.finish().await)
    });

    check_outcomes(&subset, &outcomes);
    assert_eq!(exit, Ok(()));
}

/// Directory of the Mosquitto sequence files, beside the repository.
fn sequence_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance/mosquitto")
}

/// Loads the sequences selected by `MQTTLINK_CONFORMANCE_FILTER`, or returns `None`
/// when the sequence files are absent and `MQTTLINK_CONFORMANCE` is unset.
fn selected_sequences() -> Option<Vec<Sequence>> {
    let required = std::env::var_os("MQTTLINK_CONFORMANCE").is_some();
    let filter = std::env::var("MQTTLINK_CONFORMANCE_FILTER").ok();
    load_selected(&sequence_dir(), required, filter.as_deref())
        .unwrap_or_else(|error| panic!("{error}"))
}

/// Loads the sequences of `dir` whose name contains `filter`. An absent `dir` gives
/// `Ok(None)`, or an error when the sequences are `required`.
fn load_selected(
    dir: &Path,
    required: bool,
    filter: Option<&str>,
) -> Result<Option<Vec<Sequence>>, String> {
    if !dir.is_dir() {
        println!("conformance sequences absent: {}", dir.display());
        if required {
            return Err(format!(
                "MQTTLINK_CONFORMANCE is set but the sequences are absent from {}",
                dir.display()
            ));
        }
        return Ok(None);
    }

    let mut sequences = sequences::load_dir(dir).map_err(|error| error.to_string())?;
    if let Some(filter) = filter {
        sequences.retain(|sequence| sequence.full_name().contains(filter));
        println!(
            "MQTTLINK_CONFORMANCE_FILTER=`{filter}` selects {} sequences",
            sequences.len()
        );
    }
    Ok(Some(sequences))
}

/// Plays all sequences, [`BATCH_SIZE`] at a time, and returns their outcomes in order.
async fn run_in_batches(sequences: &[Sequence]) -> Vec<Result<(), String>> {
    let mut outcomes = Vec::with_capacity(sequences.len());
    for batch in sequences.chunks(BATCH_SIZE) {
        let tasks: Vec<_> = batch
            .iter()
            .cloned()
            .map(|sequence| actix_rt::spawn(run_in_process(sequence)))
            .collect();
        for task in tasks {
            let outcome = task
                .await
                .unwrap_or_else(|error| Err(format!("the run task failed: {error}")));
            outcomes.push(outcome);
        }
    }
    outcomes
}

/// Plays one sequence against a client started in this process.
async fn run_in_process(sequence: Sequence) -> Result<(), String> {
    let command = parse_command(&sequence)?;
    let version = commands::protocol_version(sequence.version)?;
    let player = Player::bind()
        .await
        .map_err(|error| format!("binding the fake broker failed: {error}"))?;
    let port = player
        .port()
        .map_err(|error| format!("reading the fake broker's port failed: {error}"))?;

    let started = commands::start_client(port, version, sequence.clean_start)?;
    let mut client_task = actix_rt::spawn(commands::run_client(started, command));
    let result = player.play(&sequence).await;

    // What the client reported explains a failed script. The player has closed the
    // connection by now, so the client ends soon; the wait is bounded all the same.
    if result.is_ok() {
        client_task.abort();
        return Ok(());
    }
    let client_note = match tokio::time::timeout(CLIENT_REPORT_WAIT, &mut client_task).await {
        Ok(Ok(report)) => format!(" (client: {report})"),
        _ => String::new(),
    };
    client_task.abort();
    result.map_err(|error| format!("{error}{client_note}"))
}

/// Plays one sequence against a client that the driver process starts.
async fn run_through_driver(driver: &mut Driver, sequence: &Sequence) -> Result<(), String> {
    let player = Player::bind()
        .await
        .map_err(|error| format!("binding the fake broker failed: {error}"))?;
    let line = DriverLine {
        port: player
            .port()
            .map_err(|error| format!("reading the fake broker's port failed: {error}"))?,
        version: commands::protocol_version(sequence.version)?,
        clean_start: sequence.clean_start,
        command: parse_command(sequence)?,
    };
    driver.request(&line).await?;
    player.play(sequence).await
}

fn parse_command(sequence: &Sequence) -> Result<Option<Command>, String> {
    sequence.command.as_deref().map(str::parse).transpose()
}

fn deliberate_difference(sequence: &Sequence) -> Option<&'static str> {
    let name = sequence.full_name();
    DELIBERATE_DIFFERENCES
        .iter()
        .find(|(listed, _)| *listed == name)
        .map(|(_, reason)| *reason)
}

/// Prints the summary and fails on a failure that is not a deliberate difference, or
/// on a listed difference that passes.
fn check_outcomes(sequences: &[Sequence], outcomes: &[Result<(), String>]) {
    let mut failures = Vec::new();
    let mut unexpected = 0;
    let mut stale = Vec::new();
    for (sequence, outcome) in sequences.iter().zip(outcomes) {
        let difference = deliberate_difference(sequence);
        match (outcome, difference) {
            (Err(error), Some(_)) => {
                failures.push(format!(
                    "{}: {error} (deliberate difference)",
                    sequence.full_name()
                ));
            }
            (Err(error), None) => {
                unexpected += 1;
                failures.push(format!("{}: {error}", sequence.full_name()));
            }
            (Ok(()), Some(_)) => stale.push(sequence.full_name()),
            (Ok(()), None) => {}
        }
    }

    let passed = outcomes.len() - failures.len();
    println!("{passed} passed, {} failed", failures.len());
    for failure in &failures {
        println!("FAILED {failure}");
    }
    for name in &stale {
        println!("PASSED although listed as a deliberate difference: {name}");
    }

    assert_eq!(unexpected, 0, "{unexpected} sequences failed, listed above");
    assert!(
        stale.is_empty(),
        "remove the passing sequences listed above from DELIBERATE_DIFFERENCES and docs/conformance.md"
    );
}

/// Returns the path of the built `conformance_driver` example, or `None` when it is
/// missing and `MQTTLINK_CONFORMANCE` is unset.
fn driver_binary() -> Option<PathBuf> {
    // Integration tests run from target/<profile>/deps; examples are built into
    // target/<profile>/examples by `cargo test`.
    let test_binary = std::env::current_exe().unwrap();
    let profile_dir = test_binary.parent().and_then(Path::parent).unwrap();
    let binary = profile_dir.join("examples").join(format!(
        "conformance_driver{}",
        std::env::consts::EXE_SUFFIX
    ));
    if binary.is_file() {
        return Some(binary);
    }

    println!(
        "conformance driver not built at {}: run `cargo build --example conformance_driver`",
        binary.display()
    );
    assert!(
        std::env::var_os("MQTTLINK_CONFORMANCE").is_none(),
        "MQTTLINK_CONFORMANCE is set but the conformance driver is not built"
    );
    None
}

/// The driver process, killed by its PID when dropped.
struct Driver {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Driver {
    fn spawn(binary: &Path) -> Self {
        let mut child = Process::new(binary)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "error".to_owned()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|error| panic!("starting {} failed: {error}", binary.display()));
        let stdin = child.stdin.take();
        Self { child, stdin }
    }

    async fn request(&mut self, line: &DriverLine) -> Result<(), String> {
        let stdin = self.stdin.as_mut().ok_or("the driver's stdin is closed")?;
        let text = format!("{line}\n");
        let written = async {
            stdin.write_all(text.as_bytes()).await?;
            stdin.flush().await
        };
        written
            .await
            .map_err(|error| format!("writing `{line}` to the driver failed: {error}"))
    }

    /// Closes the driver's stdin, which ends it, and waits at most [`DRIVER_EXIT_WAIT`]
    /// for a successful exit.
    async fn finish(&mut self) -> Result<(), String> {
        drop(self.stdin.take());
        let status = tokio::time::timeout(DRIVER_EXIT_WAIT, self.child.wait())
            .await
            .map_err(|_| {
                format!("the driver did not exit within {DRIVER_EXIT_WAIT:?} after stdin closed")
            })?
            .map_err(|error| format!("waiting for the driver failed: {error}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("the driver exited with {status}"))
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Kill by PID when the driver is still running, for example after a failure.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.start_kill();
        }
    }
}
