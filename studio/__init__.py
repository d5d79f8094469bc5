"""The Streamlit studio's shared pieces: pages read run folders and job state and call the library."""
