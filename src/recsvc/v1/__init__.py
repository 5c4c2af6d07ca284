"""Generated code of the recsvc.v1 contract (protos/recsvc/v1): run `make proto`, never edit."""
