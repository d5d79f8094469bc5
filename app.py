"""GRASPrune Studio: `streamlit run app.py` (or `make run`).

Run as the Streamlit script, this file draws the pages; imported by the server (``streamlit run``
finds the ``st.App`` below), it adds the checkpoint download route beside Streamlit's own.
"""

import streamlit as st

if __name__ == "__main__":
    from studio.shell import main

    main()
else:
    from studio.routes import routes

    app = st.App("app.py", routes=routes())
