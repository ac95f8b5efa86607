//! podmesh protocols as deterministic state machines: no IO, time as an argument.
