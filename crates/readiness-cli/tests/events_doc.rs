//! docs/EVENTS.md is current: a fresh `readiness explore` run on each
//! backend this machine can run gives exactly the table's column for it.
//! Linux checks the epoll and poll(2) columns; the Windows pass under Wine
//! checks `afd` and `afd-direct` (READINESS_TEST_BACKEND). With
//! READINESS_EVENTS_OUT=DIR set, the columns are written to DIR instead
//! (`scripts/gen-events.sh` assembles the table from them).

use std::path::Path;

use readiness::Backend;
use readiness_cli::explore::{self, DOC_BACKENDS};

fn backends() -> Vec<Backend> {
    match std::env::var("READINESS_TEST_BACKEND") {
        Ok(name) if !name.trim().is_empty() => {
            vec![Backend::from_name(name.trim()).expect("READINESS_TEST_BACKEND names a backend")]
        }
        _ => DOC_BACKENDS
            .iter()
            .copied()
            .filter(|b| Backend::available().contains(b))
            .collect(),
    }
}

#[test]
fn the_events_table_is_current() {
    let doc = std::fs::read_to_string("../../docs/EVENTS.md").expect("read docs/EVENTS.md");
    let out = std::env::var("READINESS_EVENTS_OUT").ok();
    let mut stale = Vec::new();
    for backend in backends() {
        let outcomes = explore::run(backend).expect("run the scenarios");
        if let Some(dir) = &out {
            let text: String = outcomes
                .iter()
                .map(|o| format!("{}\t{}\t{}\n", o.scenario, o.does, o.seen))
                .collect();
            std::fs::write(Path::new(dir).join(format!("{backend}.tsv")), text)
                .expect("write the column");
            continue;
        }
        let column = explore::column(&doc, backend)
            .unwrap_or_else(|| panic!("docs/EVENTS.md has no column for {backend}"));
        assert_eq!(
            column.len(),
            outcomes.len(),
            "{backend}: scenarios in the doc vs now"
        );
        for ((name, cell), o) in column.iter().zip(&outcomes) {
            assert_eq!(name, o.scenario, "{backend}: scenario order");
            if cell != &o.seen {
                stale.push(format!(
                    "{backend} {name}:\n  doc: {cell}\n  now: {}",
                    o.seen
                ));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "docs/EVENTS.md is not current (run scripts/gen-events.sh):\n{}",
        stale.join("\n")
    );
}
