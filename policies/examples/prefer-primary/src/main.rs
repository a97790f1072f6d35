//! `mend-prefer-primary`: the whole `mend` command, with the `prefer-primary` policy
//! registered next to the built-in ones. The primary group is `$MEND_PRIMARY_GROUP`
//! (default 1).

use std::process::ExitCode;

use mend_policies::Registry;
use mend_prefer_primary::PreferPrimary;

fn main() -> ExitCode {
    // Configuration is read here, in the binary: policies do no I/O.
    let primary = match std::env::var("MEND_PRIMARY_GROUP") {
        Err(_) => 1,
        Ok(text) => match text.parse::<u32>() {
            Ok(group) if group >= 1 => group,
            _ => {
                eprintln!("mend: MEND_PRIMARY_GROUP={text:?} is not a group number (1 or more)");
                return ExitCode::from(2);
            }
        },
    };
    let mut registry = Registry::builtin();
    registry.register(
        PreferPrimary::NAME,
        Box::new(move || Box::new(PreferPrimary::new(primary))),
    );
    mend_cli::main_with(registry)
}
