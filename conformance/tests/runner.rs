// SPDX-License-Identifier: MIT OR Apache-2.0
//! The runner's skip logic, through the library with a restricted backend.

use conformance::model::ModelBackend;
use conformance::{Backend, BackendError, Capability, InspectKind, Outcome, parse, run_scenario};
use v4v::Hypervisor;
use v4v::abi::DomId;

/// The model, pretending it can act as domains 0 and 1 only and cannot destroy or inspect.
struct Limited(ModelBackend);

impl Backend for Limited {
    fn name(&self) -> &str {
        "limited"
    }
    fn supports(&self, cap: Capability) -> bool {
        cap == Capability::Create
    }
    fn can_act_as(&self, domid: DomId) -> bool {
        domid <= 1
    }
    fn begin(&mut self) -> Result<(), BackendError> {
        self.0.begin()
    }
    fn create_domain(&mut self, domid: DomId) -> Result<Box<dyn Hypervisor>, BackendError> {
        self.0.create_domain(domid)
    }
    fn inspect(&self, what: InspectKind) -> Result<u64, BackendError> {
        self.0.inspect(what)
    }
    fn end(&mut self) {
        self.0.end()
    }
}

#[test]
fn missing_capabilities_and_domains_skip() {
    let mut b = Limited(ModelBackend::new());
    let needs_destroy = parse("domains 0 1\nrequires destroy\ndestroy 1 => ok\n").expect("parses");
    assert!(matches!(
        run_scenario(&needs_destroy, &mut b),
        Outcome::Skip { .. }
    ));
    let three = parse("domains 0 1 2\n0: info => domid=0\n").expect("parses");
    assert!(matches!(run_scenario(&three, &mut b), Outcome::Skip { .. }));
    let created = parse("domains 0\nrequires create\ncreate 5 => ok\n").expect("parses");
    assert!(matches!(
        run_scenario(&created, &mut b),
        Outcome::Skip { .. }
    ));
    let fine = parse("domains 0 1\n1: info => domid=1\n").expect("parses");
    assert_eq!(run_scenario(&fine, &mut b), Outcome::Pass);
    let wrong = parse("domains 0 1\n\n1: info => domid=0\n").expect("parses");
    assert_eq!(
        run_scenario(&wrong, &mut b),
        Outcome::Fail {
            step: 1,
            line: 3,
            message: "expected domid=0, got domid=1".into()
        }
    );
}
