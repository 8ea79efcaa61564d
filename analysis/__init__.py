"""Analysis of experiment folders: ``load`` (frames), ``valley`` (the one-standard-error choice),
``figures`` (plotly), ``report`` (one offline HTML file) and ``dashboard`` (a read-only web server)."""
