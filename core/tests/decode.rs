//! Decoders of untrusted bytes (log segments, table blocks, index, bloom
//! filter, footer, manifest) return `Ok` or a typed error on any input,
//! random or a valid encoding with mutations. The proptest twin of the
//! fuzz target in `core/fuzz/fuzz_targets/decode.rs`.

use std::path::Path;
use std::sync::OnceLock;

use isthmus_core::engine::block::Block;
use isthmus_core::engine::bloom::KeyFilter;
use isthmus_core::engine::log::decode_segment;
use isthmus_core::engine::manifest::ManifestBody;
use isthmus_core::engine::sstable::{FOOTER_BYTES, Footer, decode_index};
use isthmus_core::engine::{Engine, EngineOptions, Fs, MemFs};
use isthmus_core::model::Clock;
use isthmus_testkit::version::{dotted, with_clock};
use proptest::prelude::*;

/// Feed `bytes` to every decoder; they must not panic.
fn decode_all(bytes: &[u8]) {
    let _ = decode_segment(bytes, Path::new("fuzz.log"), true, |_, _| {});
    let _ = decode_segment(bytes, Path::new("fuzz.log"), false, |_, _| {});
    let _ = Block::decode(bytes).map(|b| {
        for i in 0..b.len() {
            let _ = b.entry(i);
        }
    });
    let _ = Block::decode_verified(bytes);
    let _ = decode_index(bytes, bytes.len() as u64);
    let _ = KeyFilter::decode(bytes).map(|f| f.may_contain(b"k"));
    let _ = KeyFilter::decode_v1(bytes).map(|f| f.may_contain(b"k"));
    let _ = Footer::decode(bytes, bytes.len() as u64 + 100);
    let _ = ManifestBody::decode(bytes, Path::new("MANIFEST"));
}

/// Valid encodings of every structure, produced by a real engine.
fn samples() -> &'static Vec<Vec<u8>> {
    static S: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    S.get_or_init(|| {
        let dir = Path::new("/db");
        let fs = MemFs::new();
        let engine = Engine::open_with_fs(fs.clone(), dir, EngineOptions::default()).unwrap();
        for i in 0..300u64 {
            let version = dotted(i % 3, i + 1).at(i).value(vec![i as u8; 20]);
            engine.apply(format!("k{i}").as_bytes(), version).unwrap();
        }
        engine.flush().unwrap();
        engine
            .apply(b"tail", with_clock(Clock::new()).at(1).tombstone())
            .unwrap();
        let fs = fs.crash();
        drop(engine);
        let mut out = Vec::new();
        for p in fs.list(dir).unwrap() {
            let bytes = fs.read_all(&p).unwrap();
            if p.to_string_lossy().ends_with(".sst") {
                let n = bytes.len();
                let f = Footer::decode(&bytes[n - FOOTER_BYTES..], n as u64).unwrap();
                let (io, il) = (f.index_offset as usize, f.index_len as usize);
                let (bo, bl) = (f.bloom_offset as usize, f.bloom_len as usize);
                let index = decode_index(&bytes[io..io + il], f.index_offset).unwrap();
                let b0 = &index[0];
                out.push(bytes[b0.offset as usize..(b0.offset + b0.len) as usize].to_vec());
                out.push(bytes[io..io + il].to_vec());
                out.push(bytes[bo..bo + bl].to_vec());
                out.push(bytes[n - FOOTER_BYTES..].to_vec());
            }
            out.push(bytes);
        }
        assert!(out.len() >= 6, "expected log, manifest and table parts");
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2000,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0xdec0de),
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&bytes);
    }

    #[test]
    fn mutated_valid_encodings_never_panic(
        which in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let s = samples();
        let mut bytes = s[which.index(s.len())].clone();
        for (at, x) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= x;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        decode_all(&bytes);
    }
}

#[test]
fn valid_samples_decode() {
    // Sanity: the untouched encodings are accepted by their decoders, so
    // the mutation test starts from real structures.
    let s = samples();
    assert!(s.iter().any(|b| Block::decode(b).is_ok()));
    assert!(s.iter().any(|b| KeyFilter::decode(b).is_ok()));
    assert!(
        s.iter()
            .any(|b| ManifestBody::decode(b, Path::new("M")).is_ok())
    );
    assert!(
        s.iter().any(
            |b| decode_segment(b, Path::new("l"), true, |_, _| {}).is_ok_and(|r| r.records > 0)
        )
    );
}
