//! `vm-launcher`: the VM pod's entrypoint (see the library). Logs to stdout (the pod's log), then becomes QEMU.

use clap::Parser;

fn main() {
    let args = vm_launcher::launch::Args::parse();
    if let Err(e) = vm_launcher::launch::run(&args) {
        println!("vm-launcher: error: {e}");
        std::process::exit(1);
    }
}
