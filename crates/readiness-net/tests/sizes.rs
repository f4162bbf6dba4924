//! The per-connection structures: printed (for docs/BENCHMARKS.md) and
//! bounded, so that an idle connection stays small.

#[test]
fn per_connection_structures_are_small() {
    let table = readiness_net::sizes::table();
    println!("{:<55} {:>6}", "structure", "bytes");
    for (name, size) in &table {
        println!("{name:<55} {size:>6}");
    }
    let get = |prefix: &str| {
        table
            .iter()
            .find(|(n, _)| n.starts_with(prefix))
            .map(|(_, s)| *s)
            .unwrap()
    };
    // Slab slot + one timer entry: the loop's whole user-space cost of an
    // idle connection with a zero-sized handler.
    let slot = get("slab entry");
    let timer = get("timer heap entry");
    assert!(slot <= 64, "slab slot of a connection is {slot} bytes");
    assert_eq!(timer, 16);
    assert!(slot + timer <= 80, "{slot} + {timer}");
    assert!(get("Echo") <= 8);
}
