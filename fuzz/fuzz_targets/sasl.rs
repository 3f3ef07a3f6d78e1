//! Feeds bytes to the broker's side of SASL (`tally_kafka::sasl::Authenticator`), for
//! each mechanism: as the first client message and then as the second, and as a SCRAM
//! client-final message after a well-formed client-first. It must never panic or abort,
//! and it must never authenticate anyone without the password.

#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use tally_kafka::sasl::{Authenticator, Mechanism, Step, Users};

fn users() -> Arc<Users> {
    static USERS: OnceLock<Arc<Users>> = OnceLock::new();
    USERS
        .get_or_init(|| Arc::new(Users::from_entries([("alice", "wonderland")]).unwrap()))
        .clone()
}

fuzz_target!(|data: &[u8]| {
    for mechanism in Mechanism::ALL {
        let mut server = Authenticator::new(mechanism, users());
        if let Ok(step) = server.step(data) {
            if let Step::Done { .. } = step {
                // Only PLAIN finishes in one message, and only with the password.
                assert_eq!(mechanism, Mechanism::Plain);
                assert!(data.ends_with(b"\0wonderland"));
            }
            let _ = server.step(data);
        }
        if mechanism.is_scram() {
            let mut server = Authenticator::new(mechanism, users());
            let Ok(Step::Continue(_)) = server.step(b"n,,n=alice,r=fuzz") else {
                panic!("a well-formed client-first message is answered");
            };
            assert!(server.step(data).is_err(), "a proof without the password");
        }
    }
});
