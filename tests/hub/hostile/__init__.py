"""The hostile-input suite: each case an anonymous client or a hostile enrolled device could send, as a regression test."""
