"""GRASPrune Studio: `streamlit run app.py` (or `make run`).

Run as the Streamlit script, this file draws the pages; imported by the server (``streamlit run``
finds the ``st.App`` below), it adds the checkpoint download route beside Streamlit's own.
"""

import streamlit as st

if __name__ == "__main__":
    from studio.shell import main

    main()
else:
    from studio.heap import start_heap_trimmer
    from studio.routes import routes

    start_heap_trimmer()  # the server's freed memory back to the OS every 30 s (see studio/heap.py)
    app = st.App("app.py", routes=routes())
