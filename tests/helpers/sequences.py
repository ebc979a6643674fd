"""Hand-made protein sequences with known relations (identity, mutations) for metric tests."""

A = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ"  # 33 residues
A_MUT3 = A[:5] + "W" + A[6:15] + "W" + A[16:25] + "W" + A[26:]  # 3 substitutions (no W in A)
B = "GHPLWEDNCYVTMAGSRKFIQDELWHNPCTMYG"  # unrelated
