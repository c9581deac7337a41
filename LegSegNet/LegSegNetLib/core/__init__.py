"""The shared vocabulary every other part uses: errors that carry exit codes, the four tissues and their
labels, progress reporting, and small file and text helpers. Imports nothing else of LegSegNetLib."""
