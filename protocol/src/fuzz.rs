//! Fuzz targets of what a signaling server reads from clients and a client
//! from the server (`courier_common::fuzz`): frames, SDP fingerprints, SAS
//! nonces and candidates.

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use crate::event::ServerFrame;
use crate::message::parse;
use crate::sas::{fingerprint_in_sdp, parse_nonce};

const MAX: usize = 64 * 1024;

/// The field names a client frame may carry, and a few it may not.
const FIELDS: [&str; 15] = [
    "token",
    "call_id",
    "callee",
    "sdp",
    "sas_commit",
    "sas_nonce",
    "reason",
    "candidates",
    "kind",
    "nonce",
    "v",
    "type",
    "id",
    "extra",
    "ice_policy",
];
const TYPES: [&str; 14] = [
    "auth",
    "reauth",
    "invite",
    "ringing",
    "answer",
    "reject",
    "hangup",
    "candidates",
    "negotiate",
    "resume",
    "sas_reveal",
    "ping",
    "dance",
    "",
];

fn config() -> ProptestConfig {
    ProptestConfig { cases: courier_common::fuzz::cases(), ..ProptestConfig::default() }
}

/// Any JSON value, a few levels deep, with the strings a frame's fields take.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|number| json!(number)),
        "[a-z0-9_+:.\\- ]{0,20}".prop_map(Value::from),
        "v=0\r\n(a=fingerprint:sha-256 [0-9A-F:]{0,20}\r\n)?".prop_map(Value::from),
        "[0-9a-f]{64}".prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{1,10}", inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// A frame shaped like a client message: version, a type, an id, and some
/// of the fields, each with any value.
fn frame() -> impl Strategy<Value = String> {
    (
        prop_oneof![Just(json!(1)), json_value()],
        prop::sample::select(TYPES.to_vec()),
        prop_oneof!["[a-z0-9]{1,8}".prop_map(Value::from), json_value()],
        prop::collection::vec((prop::sample::select(FIELDS.to_vec()), json_value()), 0..5),
    )
        .prop_map(|(v, kind, id, fields)| {
            let mut object = Map::new();
            object.insert("v".into(), v);
            object.insert("type".into(), Value::from(kind));
            object.insert("id".into(), id);
            for (name, value) in fields {
                object.insert(name.into(), value);
            }
            Value::Object(object).to_string()
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_text_frame_is_parsed_or_refused_never_a_panic(text in ".{0,512}") {
        let _ = parse(&text, MAX);
        let _ = ServerFrame::decode(&text);
    }

    #[test]
    fn a_message_shaped_frame_that_parses_encodes_back_to_itself(text in frame()) {
        if let Ok(message) = parse(&text, MAX) {
            let again = parse(&message.encode(), MAX).expect("what a client encodes, the server parses");
            prop_assert_eq!(again, message);
        }
        let _ = ServerFrame::decode(&text);
    }

    #[test]
    fn sdp_fingerprints_and_nonces_are_read_or_refused(
        lines in prop::collection::vec(
            prop_oneof![
                "a=fingerprint:[a-zA-Z0-9\\-]{0,8} [0-9a-fA-F:]{0,100}",
                "a=fingerprint:.{0,40}",
                "[a-z]=.{0,40}",
            ],
            0..6,
        ),
        nonce in prop_oneof!["[0-9a-f]{0,70}", ".{0,70}"],
    ) {
        let sdp = lines.join("\r\n");
        if let Some(fingerprint) = fingerprint_in_sdp(&sdp) {
            prop_assert!(fingerprint.is_ascii());
        }
        if let Some(bytes) = parse_nonce(&nonce) {
            prop_assert_eq!(crate::sas::NONCE_BYTES, bytes.len());
        }
    }
}
