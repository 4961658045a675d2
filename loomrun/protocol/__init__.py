"""The wire contract between the supervisor, the per-job workers and the writer.

The only package every process imports. Messages are NamedTuples (quick to define at start-up, to
pickle and to unpickle) sent over multiprocessing connections; errors cross process boundaries as
data (kind + message), never as pickled exceptions.
"""
