use super::*;
use proptest::prelude::*;

fn sample_requests() -> Vec<Request> {
    vec![
        Request {
            id: 1,
            timeout_ms: 500,
            deadline_ms: 1_700_000_000_000,
            body: RequestBody::Get {
                keyspace: "k".into(),
                key: vec![1, 2, 3],
                consistency: None,
            },
        },
        Request {
            id: u64::MAX,
            timeout_ms: 0,
            deadline_ms: u64::MAX,
            body: RequestBody::Put {
                mode: WriteMode::Context,
                keyspace: "carts".into(),
                key: b"alice".to_vec(),
                value: vec![7; 300],
                context: Context(vec![9; 40]),
                consistency: Some(Consistency::EachQuorum),
                write_id: WriteId([3; 16]),
                expiry: Default::default(),
                sloppy: None,
            },
        },
        Request {
            id: 3,
            timeout_ms: 10,
            deadline_ms: 1_700_000_000_000,
            body: RequestBody::Delete {
                keyspace: "carts".into(),
                key: vec![],
                context: Context::default(),
                consistency: Some(Consistency::All),
                write_id: WriteId([0; 16]),
                sloppy: None,
            },
        },
        Request {
            id: 4,
            timeout_ms: 30_000,
            deadline_ms: 1_700_000_000_000,
            body: RequestBody::Repair {
                keyspace: Some("carts".into()),
                remote_dc: None,
            },
        },
        Request {
            id: 5,
            timeout_ms: 30_000,
            deadline_ms: 1_700_000_000_000,
            body: RequestBody::Registry(RegistryRequest::Upload {
                name: "cart-union".into(),
                version: 1,
                module: b"\0asm".to_vec(),
                force: true,
            }),
        },
        Request {
            id: 6,
            timeout_ms: 1,
            deadline_ms: 1_700_000_000_000,
            body: RequestBody::Registry(RegistryRequest::Attach {
                keyspace: "carts".into(),
                name: "cart-union".into(),
                version: 1,
            }),
        },
        Request {
            id: 7,
            timeout_ms: 30_000,
            deadline_ms: 1_700_000_000_000,
            body: RequestBody::Registry(RegistryRequest::Delete {
                name: "cart-union".into(),
                version: 1,
            }),
        },
        Request {
            id: 8,
            timeout_ms: 30_000,
            deadline_ms: 1_700_000_000_000,
            body: RequestBody::Registry(RegistryRequest::Canary {
                keyspace: "carts".into(),
                name: "cart-union".into(),
                version: 2,
                dc: Some("dc1".into()),
                share_ppm: None,
                window_ms: Some(30_000),
                merges_min: None,
                failure_rate_max_ppm: Some(50_000),
            }),
        },
    ]
}

#[test]
fn requests_and_responses_round_trip() {
    for r in sample_requests() {
        assert_eq!(decode::<Request>(&encode(&r)).unwrap(), r);
    }
    let response = Response {
        id: 4,
        clock_ms: 1_700_000_000_000,
        body: ResponseBody::Error(WireError {
            code: ErrorCode::Timeout,
            message: "2 of 3".into(),
            acks: Some(AckCount {
                required: 2,
                acked: 1,
            }),
            needs: None,
        }),
    };
    assert_eq!(decode::<Response>(&encode(&response)).unwrap(), response);
    let operation = OperationInfo {
        id: 1_700_000_000_123,
        kind: OperationKind::FullSync,
        keyspace: Some("carts".into()),
        dc: Some("dc2".into()),
        state: OperationState::Running,
        started_ms: 1_700_000_000_000,
        finished_ms: None,
        ranges_total: 96,
        progress: RepairReport {
            ranges: 64,
            ranges_failed: 1,
            keys_differing: 3,
            keys_pulled: 2,
            keys_pushed: 1,
            bytes: u64::MAX,
        },
        error: None,
    };
    for body in [
        ResponseBody::Started(operation.clone()),
        ResponseBody::Operation(OperationInfo {
            state: OperationState::Cancelled,
            finished_ms: Some(1_700_000_001_000),
            error: Some("cancelled".into()),
            ..operation.clone()
        }),
        ResponseBody::Operations(vec![operation.clone(), operation]),
    ] {
        let started = Response {
            id: 5,
            clock_ms: 1_700_000_000_000,
            body,
        };
        assert_eq!(decode::<Response>(&encode(&started)).unwrap(), started);
    }
    for body in [
        RequestBody::Operations(OperationsRequest::List),
        RequestBody::Operations(OperationsRequest::Get { id: 7 }),
        RequestBody::Rebuild {
            from_dc: Some("dc1".into()),
        },
    ] {
        let request = Request {
            id: 9,
            timeout_ms: 1_000,
            deadline_ms: 1_700_000_000_000,
            body,
        };
        assert_eq!(decode::<Request>(&encode(&request)).unwrap(), request);
    }
    let resolver = BoundResolver {
        name: "cart-union".into(),
        version: 1,
        hash: Some([7; 32]),
    };
    let listing = Response {
        id: 6,
        clock_ms: 1_700_000_000_000,
        body: ResponseBody::Registry(RegistryResponse::Listing {
            resolvers: vec![ResolverInfo {
                name: "cart-union".into(),
                version: 1,
                hash: [7; 32],
                module_bytes: 40_000,
                law_check: LawCheckOutcome::Overridden {
                    seed: 9,
                    violations: vec!["commutative".into()],
                },
            }],
            bindings: vec![BindingInfo {
                keyspace: "carts".into(),
                current: Some(resolver.clone()),
                history: vec![None, Some(resolver.clone())],
                from_config: false,
                canary: Some(CanaryInfo {
                    resolver,
                    dc: Some("dc1".into()),
                    share_ppm: Some(250_000),
                    window_ms: 60_000,
                    merges_min: 20,
                    failure_rate_max_ppm: 100_000,
                    since_ms: 1_700_000_000_000,
                }),
                paused: true,
                events: vec![BindingEvent {
                    at_ms: 1_700_000_000_001,
                    note: "paused".into(),
                }],
            }],
        }),
    };
    assert_eq!(decode::<Response>(&encode(&listing)).unwrap(), listing);
}

#[test]
fn huge_claimed_length_is_refused_without_allocating() {
    // Request id 1, timeout 1, Get, keyspace claiming u32::MAX bytes.
    let mut bytes = vec![1, 1, 0];
    bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    bytes.extend_from_slice(b"short");
    assert!(matches!(
        decode::<Request>(&bytes),
        Err(DecodeError::Malformed { .. })
    ));
}

#[test]
fn consistency_parses_names_case_insensitively() {
    assert_eq!(
        "local_quorum".parse::<Consistency>(),
        Ok(Consistency::LocalQuorum)
    );
    assert!(
        "MOST"
            .parse::<Consistency>()
            .unwrap_err()
            .contains("EACH_QUORUM")
    );
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2048,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x1571_0001),
        ..ProptestConfig::default()
    })]

    /// Twin of the `wire` fuzz target: arbitrary bytes never panic the
    /// decoder, and whatever decodes survives a re-encode unchanged.
    /// (Compared by their canonical encoding: equality of the input bytes
    /// is too strong, postcard accepts over-long varints, and equality of
    /// the values too, a float field may decode to NaN.)
    #[test]
    fn arbitrary_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(r) = decode::<Request>(&bytes) {
            prop_assert!(re_encodes(&r));
        }
        if let Ok(r) = decode::<Response>(&bytes) {
            prop_assert!(re_encodes(&r));
        }
        let _ = decode::<Hello>(&bytes);
    }

    /// Valid messages with bytes flipped, cut or appended are refused or
    /// decode to some other valid message, never a panic.
    #[test]
    fn mutated_messages_fail_cleanly(which in 0usize..4, pos in any::<prop::sample::Index>(), flip in 1u8..=255, cut in any::<bool>()) {
        let mut bytes = encode(&sample_requests()[which]);
        let i = pos.index(bytes.len());
        if cut {
            bytes.truncate(i);
        } else {
            bytes[i] ^= flip;
        }
        if let Ok(r) = decode::<Request>(&bytes) {
            prop_assert!(re_encodes(&r));
        }
    }
}

/// `message` encodes to bytes that decode to a message with the very same
/// encoding (bit for bit, NaNs included).
fn re_encodes<T>(message: &T) -> bool
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let once = encode(message);
    decode::<T>(&once).is_ok_and(|again| encode(&again) == once)
}

#[test]
fn a_status_with_nan_lag_re_encodes() {
    // Found by the `wire` fuzz target: value equality fails on NaN. (The
    // second byte is the reply's clock, added since; each bridge report
    // is followed by its four quarantine counters, 0.)
    let bytes: [u8; 69] = [
        0x60, 0x0, 0x2, 0x0, 0x2, 0x6, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x7, 0x0, 0x0, 0x0, 0x0, 0x0,
        0x0, 0x0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0,
        0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0,
        0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x3f, 0x0, 0x2, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0,
    ];
    let response = decode::<Response>(&bytes).unwrap();
    assert!(re_encodes(&response));
}

#[test]
fn scan_cursors_read_back_and_hostile_ones_are_typed_errors() {
    for n in [0u64, 1, 42, u64::MAX] {
        let cursor = ScanCursor(n);
        assert_eq!(cursor.to_string().parse::<ScanCursor>(), Ok(cursor));
    }
    assert!(ScanCursor::START.is_end());
    assert_eq!(ScanCursor::after(7), ScanCursor(8));
    // Past the last hash, the scan is done.
    assert!(ScanCursor::after(u64::MAX).is_end());
    let long = "9".repeat(10_000);
    for hostile in [
        "",
        "-1",
        "+1",
        " 1",
        "1 ",
        "0x10",
        "abc",
        "18446744073709551616",
        long.as_str(),
        "١٢",
        "1\0",
    ] {
        let err = hostile.parse::<ScanCursor>().unwrap_err();
        assert!(err.text.chars().count() <= 64, "{err}");
        assert!(err.to_string().contains("invalid cursor"), "{err}");
    }
}

#[test]
fn a_scan_request_and_its_page_round_trip() {
    let request = Request {
        id: 3,
        timeout_ms: 100,
        deadline_ms: 0,
        body: RequestBody::Scan {
            keyspace: "carts".into(),
            cursor: u64::MAX,
            count: SCAN_COUNT_MAX,
        },
    };
    assert_eq!(decode::<Request>(&encode(&request)).unwrap(), request);
    let response = Response {
        id: 3,
        clock_ms: 1,
        body: ResponseBody::ScanPage {
            keys: vec![b"a".to_vec(), vec![0xff]],
            cursor: 9,
        },
    };
    assert_eq!(decode::<Response>(&encode(&response)).unwrap(), response);
}
