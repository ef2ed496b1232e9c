//! The partitioner: which partition of a topic a key (room id, user id) lives on.
//!
//! The commands tier needs it to know which rooms belong to the partitions it owns, and every
//! producer must agree with it. It is Kafka's Java-client default (murmur2 of the key bytes,
//! made positive, modulo the partition count), which librdkafka offers as `murmur2_random`,
//! so Java, librdkafka and this code all place a key on the same partition.

/// Kafka's `Utils.murmur2`.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    let length = data.len();
    let mut h: u32 = SEED ^ (length as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// Partition of `key` among `partitions` partitions.
pub fn partition_for(key: &str, partitions: i32) -> i32 {
    assert!(partitions > 0, "a topic has at least one partition");
    (murmur2(key.as_bytes()) & 0x7fff_ffff) % partitions
}

/// The librdkafka partitioner name that matches [`partition_for`].
pub const LIBRDKAFKA_PARTITIONER: &str = "murmur2_random";

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectors of Kafka's own `UtilsTest.testMurmur2`.
    #[test]
    fn matches_the_java_client() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (input, expected) in cases {
            assert_eq!(
                murmur2(input),
                expected,
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn partitions_are_in_range_and_spread() {
        let mut counts = [0u32; 12];
        for i in 0..12_000 {
            let p = partition_for(&format!("room-{i}"), 12);
            assert!((0..12).contains(&p));
            counts[p as usize] += 1;
        }
        // A uniform hash puts ~1000 keys on each; anything under 800 would mean a broken spread.
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }
}
