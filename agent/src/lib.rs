pub mod datasources;
