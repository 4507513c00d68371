"""Small experiments with known answers, where a claim of the lecture can be seen and tested."""
