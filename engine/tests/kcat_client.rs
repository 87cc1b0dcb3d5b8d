//! kcat from Debian (librdkafka 2.0.x: an older client that negotiates differently) against
//! the real binary.

mod common;

use common::kcat;
use std::process::Command;

#[test]
fn kcat_lists_produces_and_consumes() {
    let version = Command::new("kcat").arg("-V").output().expect("kcat -V");
    let version = String::from_utf8_lossy(&version.stdout).to_string();
    eprintln!("{version}");
    let broker =
        common::TestBroker::start(&["--auto-create-topics", "true", "--default-partitions", "2"]);
    let b = broker.bootstrap();

    let listing = kcat(&["-b", &b, "-L"], None);
    assert!(listing.contains("1 brokers:"), "{listing}");
    assert!(listing.contains(&format!("broker 0 at {b}")), "{listing}");

    // Produce keyed records with headers through each codec; auto-create makes the topic.
    let mut lines = Vec::new();
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let input: String = (0..20)
            .map(|i| format!("{codec}-k{i}:{codec}-value-{i}\n"))
            .collect();
        kcat(
            &[
                "-b", &b, "-P", "-t", "kc", "-K:", "-p", "1", "-z", codec, "-H", "h=v",
            ],
            Some(&input),
        );
        lines.extend((0..20).map(|i| format!("{codec}-k{i}|{codec}-value-{i}|h=v")));
    }
    let listing = kcat(&["-b", &b, "-L", "-t", "kc"], None);
    assert!(
        listing.contains("topic \"kc\" with 2 partitions"),
        "{listing}"
    );

    let consumed = kcat(
        &[
            "-b",
            &b,
            "-C",
            "-t",
            "kc",
            "-p",
            "1",
            "-o",
            "beginning",
            "-e",
            "-f",
            "%o|%k|%s|%h\n",
        ],
        None,
    );
    let got: Vec<&str> = consumed.lines().collect();
    assert_eq!(got.len(), lines.len(), "{consumed}");
    for (i, (g, want)) in got.iter().zip(&lines).enumerate() {
        assert_eq!(*g, format!("{i}|{want}"));
    }
    // An empty partition: kcat reaches its end and exits.
    let empty = kcat(
        &[
            "-b",
            &b,
            "-C",
            "-t",
            "kc",
            "-p",
            "0",
            "-o",
            "beginning",
            "-e",
        ],
        None,
    );
    assert_eq!(empty, "");
}
