// Shared by the examples: a tiny `--name value` parser (no clap needed for
// four flags). Not an example itself.
#![allow(dead_code)]

use std::collections::HashMap;

pub struct Args(HashMap<String, String>);

impl Args {
    pub fn parse(known: &[&str]) -> Args {
        let mut map = HashMap::new();
        let mut it = std::env::args().skip(1);
        while let Some(a) = it.next() {
            let Some(name) = a.strip_prefix("--") else {
                die(&format!("unexpected argument {a:?}"));
            };
            if !known.contains(&name) {
                die(&format!(
                    "unknown flag --{name} (known: {})",
                    known.join(", ")
                ));
            }
            let Some(v) = it.next() else {
                die(&format!("--{name} needs a value"));
            };
            map.insert(name.to_string(), v);
        }
        Args(map)
    }

    pub fn get<T: std::str::FromStr>(&self, name: &str, default: T) -> T {
        match self.0.get(name) {
            None => default,
            Some(v) => v
                .parse()
                .unwrap_or_else(|_| die(&format!("--{name}: cannot parse {v:?}"))),
        }
    }

    pub fn opt(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

pub fn die(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(2)
}
