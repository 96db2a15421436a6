"""The prompt optimizer: meta-prompt, candidate proposers and hygiene, one-stage loop, two-stage transfer."""
