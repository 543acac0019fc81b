//! Properties of the query decoder, the form encoder B uses for A's URL, and the request-id
//! rule, over generated inputs.

#![forbid(unsafe_code)]

use echo_core::client::form_encode;
use echo_core::http::{decode_query, is_valid_request_id, request_id, QueryError};
use proptest::prelude::*;

proptest! {
    #[test]
    fn encode_then_decode_is_identity(s in any::<String>()) {
        let query = format!("msg={}", form_encode(&s));
        let pairs = decode_query(&query).expect("an encoded query decodes");
        prop_assert_eq!(pairs, vec![("msg".to_string(), s)]);
    }

    #[test]
    fn encoded_values_only_use_safe_characters(s in any::<String>()) {
        let encoded = form_encode(&s);
        prop_assert!(encoded.bytes().all(|b| b.is_ascii_alphanumeric() || b"*-._+%".contains(&b)));
    }

    #[test]
    fn first_msg_wins_among_many_pairs(values in proptest::collection::vec(any::<String>(), 1..6)) {
        let query: Vec<String> = values.iter().map(|v| format!("msg={}", form_encode(v))).collect();
        let pairs = decode_query(&query.join("&")).expect("decodes");
        prop_assert_eq!(&pairs[0].1, &values[0]);
        prop_assert_eq!(pairs.len(), values.len());
    }

    #[test]
    fn decoding_any_text_never_panics_and_errors_are_explained(s in ".*") {
        match decode_query(&s) {
            Ok(pairs) => {
                // Whatever decoded, encoded again, decodes to the same pairs.
                let again: Vec<String> =
                    pairs.iter().map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v))).collect();
                prop_assert_eq!(decode_query(&again.join("&")).expect("re-encoded"), pairs);
            }
            Err(QueryError::MalformedEscape) => prop_assert!(s.contains('%')),
            Err(QueryError::NotUtf8) => prop_assert!(s.contains('%')),
        }
    }

    #[test]
    fn plain_text_without_escapes_decodes_to_itself(s in "[A-Za-z0-9 ._~!$'()*,;:@/?-]*") {
        let pairs = decode_query(&format!("msg={}", s.replace(' ', "+"))).expect("decodes");
        prop_assert_eq!(&pairs[0].1, &s);
    }

    #[test]
    fn request_ids_are_always_valid_and_valid_ones_kept(s in any::<String>()) {
        let id = request_id(Some(&s));
        prop_assert!(is_valid_request_id(&id));
        prop_assert_eq!(id == s, is_valid_request_id(&s));
    }

    #[test]
    fn well_formed_ids_are_kept(s in "[A-Za-z0-9._-]{1,128}") {
        prop_assert_eq!(request_id(Some(&s)), s);
    }
}
