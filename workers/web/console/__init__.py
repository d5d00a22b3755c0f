"""The live incident console: server-rendered pages at ``/`` on ``unship up``'s HTTP server (not ``unship
gateway``). ``routes`` has the pages, actions and streams; ``identity`` who is signed in (the API's rules),
sessions and CSRF; ``views`` the charts, stage bar and times; ``live`` the server-sent events; ``rehearsals``
tabletop reports and scheduled rehearsal runs. Templates and static assets (htmx vendored, see
``static/vendor/README.md``) ship with the package."""
