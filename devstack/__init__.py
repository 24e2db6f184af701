"""The development stack behind `make run` and `make test`: local or embedded servers, and a supervisor."""
