//! `macvtap` CNI binary: env + stdin in, result or error JSON on stdout, logs on stderr.

use std::io::{Read, Write};

fn main() {
    // A typical config fits: one read instead of read_to_end's growth from 32 bytes (it still grows for more).
    let mut stdin = Vec::with_capacity(8192);
    let env = macvtap_cni::env::Env::from_process();
    let out = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => macvtap_cni::run(&env, &stdin),
        Err(e) => macvtap_cni::Outcome {
            stdout: macvtap_cni::error::CniError::new(
                macvtap_cni::error::Code::Io,
                "reading stdin failed",
                e.to_string(),
            )
            .to_json("1.1.0"),
            exit_code: 1,
        },
    };
    let mut so = std::io::stdout().lock();
    let _ = so.write_all(out.stdout.as_bytes());
    let _ = so.flush();
    std::process::exit(out.exit_code);
}
