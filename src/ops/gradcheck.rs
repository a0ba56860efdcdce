//! Finite-difference gradient checking, used by every op's tests.
