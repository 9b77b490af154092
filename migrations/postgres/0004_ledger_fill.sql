-- Balance updates stay on their page (HOT): a wallet's row is rewritten by
-- every transfer it takes part in, and an update that finds room on the
-- row's own page changes no index entry and leaves nothing for the primary
-- key's B-tree to split over. A full page (the default fill factor, 100)
-- makes every update a new index entry. Pages written from now on keep 30 %
-- free; `VACUUM FULL ledger_accounts` repacks an existing table at this fill
-- factor.
ALTER TABLE ledger_accounts SET (fillfactor = 70);
